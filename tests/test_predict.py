"""`audiocnn predict` and the Python API: the evaluate stage's answers, for files, folders, lists."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn import load_model
from audiocnn.cli import main
from tests.conftest import tiny_config, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A crnn_gru trained 2 epochs on the tiny demo data and evaluated (predictions.csv written)."""
    from audiocnn.experiment import evaluate_model, job_of

    root = tmp_path_factory.mktemp("predict")
    cfg = tiny_config(root, "model=crnn_gru", "tracking.export_onnx=true")
    train(cfg)
    evaluate_model(job_of(cfg))
    return cfg, pd.read_csv(root / "metrics" / "predictions.csv", dtype={"actual": str, "predicted": str})


def test_predict_on_the_test_split_reproduces_evaluate(trained):
    cfg, evaluated = trained
    records = load_model(cfg.paths.models).predict(evaluated["path"].tolist())
    assert [r["path"] for r in records] == evaluated["path"].tolist()
    assert [r["label"] for r in records] == evaluated["predicted"].tolist()
    np.testing.assert_array_equal(np.round([r["confidence"] for r in records], 4), evaluated["confidence"])


def test_the_api_takes_arrays_and_gives_classes_features_and_top_k(trained):
    cfg, evaluated = trained
    model = load_model(cfg.paths.models)
    assert model.classes == json.loads((Path(cfg.paths.prepared) / "classes.json").read_text())
    assert model.features["sr"] == cfg.features.sr
    path = evaluated["path"].iloc[0]
    samples, sr = sf.read(path, dtype="float32")
    from_file, from_array = model.predict([path], top_k=2)[0], model.predict([samples], sample_rate=sr, top_k=2)[0]
    assert from_array["label"] == from_file["label"]
    assert from_array["confidence"] == pytest.approx(from_file["confidence"], abs=1e-6)
    assert len(from_file["top_k"]) == 2 and from_file["top_k"][0] == [from_file["label"], from_file["confidence"]]
    assert sum(from_file["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="sample_rate"):
        model.predict([samples])


def test_a_long_file_is_read_in_chunks_with_the_same_answer(trained, tmp_path):
    """Past `features.chunk_seconds` a file is decoded in pieces with the front-end's margin: the
    windows, and so the answer, equal those of the whole file at once."""
    cfg, evaluated = trained
    clips = [sf.read(p, dtype="float32")[0] for p in evaluated["path"].iloc[:4]]
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate(clips * 3), cfg.features.sr)  # about 36 s
    whole = load_model(cfg.paths.models).predict([long], timeline=True)[0]
    from audiocnn.inference.predictor import Predictor

    chunked_model = load_model(cfg.paths.models)
    chunked_model.backend.chunk_frames = 100  # about 3 s pieces
    chunked = chunked_model.predict([long], timeline=True)[0]
    assert len(chunked["timeline"]) == len(whole["timeline"]) > 10
    assert chunked["label"] == whole["label"]
    np.testing.assert_allclose(list(chunked["probabilities"].values()), list(whole["probabilities"].values()),
                               atol=2e-3)
    assert isinstance(chunked_model.backend, Predictor)


def test_predict_cli_on_files_folders_lists_and_a_bad_file(trained, tmp_path, capsys):
    cfg, evaluated = trained
    folder = tmp_path / "recordings" / "nested"
    folder.mkdir(parents=True)
    for path in evaluated["path"].iloc[:3]:
        shutil.copy(path, folder / Path(path).name)
    (folder / "notes.txt").write_text("not audio")  # a folder's non-audio files are not inputs
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "note"], *[[p, "x"] for p in evaluated["path"].iloc[3:5]]])
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tmp_path / "recordings"), str(listing), str(bad), "--model", cfg.paths.models,
                 "--output", str(out), "--timeline"]) == 0
    rows = pd.read_csv(out)
    assert len(rows) == 6 and rows["path"].iloc[-1] == str(bad)
    assert rows["error"].notna().sum() == 1 and "broken.wav" in capsys.readouterr().err
    good = rows[rows["error"].isna()]
    assert {"label", "confidence", "top1_label", "top3_probability", "duration"} <= set(rows.columns)
    assert (good["top1_label"] == good["label"]).all()
    timeline = pd.read_csv(tmp_path / "preds_timeline.csv")
    assert set(timeline.columns) == {"path", "start_s", "end_s", "label", "probability"}
    assert set(timeline["path"]) == set(good["path"]) and (timeline["end_s"] > timeline["start_s"]).all()

    jsonl = tmp_path / "preds.jsonl"
    assert main(["predict", str(evaluated["path"].iloc[0]), "--model", cfg.paths.models, "--output", str(jsonl)]) == 0
    assert json.loads(jsonl.read_text().splitlines()[0])["path"] == evaluated["path"].iloc[0]
    assert main(["predict", str(bad), "--model", cfg.paths.models]) == 1  # nothing could be predicted
    assert main(["predict", str(bad), "--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_train_stage_exports_and_logs_model_onnx_which_predict_runs(trained, tmp_path):
    import mlflow

    cfg, evaluated = trained
    onnx_file = Path(cfg.paths.models) / "model.onnx"
    assert onnx_file.is_file()
    run_id = json.loads((Path(cfg.paths.models) / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(cfg.tracking.uri)
    assert "model.onnx" in [a.path for a in mlflow.MlflowClient().list_artifacts(run_id)]
    paths = evaluated["path"].tolist()
    exported = load_model(onnx_file).predict(paths)
    eager = load_model(cfg.paths.models).predict(paths)
    assert [r["label"] for r in exported] == [r["label"] for r in eager]
    np.testing.assert_allclose([r["confidence"] for r in exported], [r["confidence"] for r in eager], atol=1e-4)
