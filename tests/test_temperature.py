"""Temperature scaling: T fitted on the val split by the train stage (`trainer.calibrate=temperature`),
stored in model.pt and applied alike by evaluate, predict, the exported graphs and the pyfunc."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from audiocnn import load_model
from audiocnn.errors import BundleError, ConfigError
from audiocnn.inference.predictor import Predictor
from audiocnn.models.bundle import load_bundle, temperature
from audiocnn.models.scorer import WindowScorer
from audiocnn.experiment import data_module, job_of
from audiocnn.training.temperature import clip_nll, fit_temperature
from audiocnn.training.windows import window_logits
from tests.conftest import tiny_config, train, untrained_bundle
from tests.test_export import assert_exports_match, clips


def overconfident(seed: int = 0, scale: float = 8.0):
    """Logits of 400 one-window clips, 5 classes, right about 70 % of the time but all near-certain."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (400,), generator=generator)
    guess = torch.where(torch.rand(400, generator=generator) < 0.7, labels, torch.randint(0, 5, (400,),
                                                                                             generator=generator))
    logits = torch.randn(400, 5, generator=generator) + 3 * torch.nn.functional.one_hot(guess, 5)
    return logits * scale, labels


def test_the_fitted_temperature_is_the_nll_minimum_and_lowers_it():
    logits, labels = overconfident()
    counts = [1] * len(labels)
    fitted = fit_temperature(logits, counts, labels)
    grid = np.linspace(0.5, 30, 2000)
    best = grid[np.argmin([float(clip_nll(logits.double(), counts, labels, t)) for t in grid])]
    assert fitted > 1 and fitted == pytest.approx(best, rel=0.01)
    assert clip_nll(logits, counts, labels, fitted) < 0.8 * clip_nll(logits, counts, labels, 1.0)
    under = fit_temperature(logits / 40, counts, labels)  # underconfident logits: T < 1 sharpens them
    assert under < 1 and clip_nll(logits / 40, counts, labels, under) < clip_nll(logits / 40, counts, labels, 1.0)


def test_the_nll_is_that_of_the_windows_vote():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0], [4.0, 0.0]]), torch.tensor([0, 1])
    vote = torch.stack([logits[:2].softmax(1).mean(0), logits[2:].softmax(1)[0]])  # clips of 2 and 1 windows
    expected = -(vote[0, 0].log() + vote[1, 1].log()) / 2
    torch.testing.assert_close(clip_nll(logits, [2, 1], labels, 1.0), expected)


def test_no_val_clips_is_an_error_naming_the_setting():
    with pytest.raises(ConfigError, match=r"^trainer.calibrate=temperature: the val split has no clips"):
        fit_temperature(torch.zeros(0, 3), [], torch.zeros(0, dtype=torch.long))


def with_temperature(folder: Path, value, dest: Path) -> Path:
    """A copy of `folder/model.pt` whose temperature is `value`."""
    bundle = torch.load(folder / "model.pt", weights_only=True)
    bundle["temperature"] = value
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(bundle, dest / "model.pt")
    return dest


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), "2", True])
def test_a_bad_temperature_in_a_model_file_is_refused(tmp_path, value):
    folder = with_temperature(untrained_bundle(tmp_path / "m").parent, value, tmp_path / "bad")
    with pytest.raises(BundleError, match=r"temperature=.*: must be a finite number > 0"):
        load_bundle(folder)


def test_a_bundle_without_temperature_loads_with_t_1(tmp_path):
    folder = untrained_bundle(tmp_path / "m").parent
    bundle = torch.load(folder / "model.pt", weights_only=True)
    del bundle["temperature"]
    torch.save(bundle, folder / "model.pt")
    assert temperature(load_bundle(folder)[1]) == 1.0 and Predictor.load(folder).temperature == 1.0


def test_predict_divides_each_windows_logits_by_the_temperature(prepared_store, tmp_path):
    plain = untrained_bundle(tmp_path / "plain", "features.top_db=60").parent
    hot = with_temperature(plain, 3.0, tmp_path / "hot")
    inputs = [str(p) for p in clips(prepared_store, tmp_path, prepared_store.features.sr)]
    at_1 = list(Predictor.load(plain).score(inputs, keep_windows=True))
    at_3 = list(Predictor.load(hot).score(inputs, keep_windows=True))
    for a, b in zip(at_1, at_3):  # softmax(z / 3) == softmax(log softmax(z) / 3)
        for (_, p1), (_, p3) in zip(a.windows, b.windows):
            expected = torch.from_numpy(np.log(p1) / 3.0).softmax(0).numpy()
            np.testing.assert_allclose(p3, expected, atol=1e-5)
        assert not np.allclose(a.probabilities, b.probabilities, atol=1e-4)


def test_exports_and_the_pyfunc_apply_the_temperature_as_the_bundle_does(prepared_store, tmp_path):
    from audiocnn.inference.pyfunc import AudioClassifier

    plain = untrained_bundle(tmp_path / "plain", "features.top_db=60").parent
    hot = with_temperature(plain, 0.25, tmp_path / "hot")
    inputs = clips(prepared_store, tmp_path, prepared_store.features.sr)
    assert_exports_match(hot, inputs, tmp_path)  # ONNX (onnxruntime) and TorchScript == model.pt at T = 0.25
    onnx = load_model(tmp_path / "hot.onnx")
    assert onnx.backend.features and not np.allclose(
        onnx.predict(inputs[:1])[0]["confidence"], load_model(plain).predict(inputs[:1])[0]["confidence"], atol=1e-3)
    served = AudioClassifier()
    served.load_context(SimpleNamespace(artifacts={"model.pt": str(hot / "model.pt")}, model_config={}))
    wave, _ = soundfile.read(inputs[0], dtype="float32")
    answer = served.predict(None, {"samples": wave.tolist(), "sample_rate": prepared_store.features.sr})[0]
    np.testing.assert_allclose(list(answer["probabilities"].values()),
                               list(load_model(hot).predict([inputs[0]])[0]["probabilities"].values()), atol=1e-6)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A cnn trained 6 epochs on 12 demo clips per class with trainer.calibrate=temperature, then evaluated
    (2 epochs on 6 clips learn nothing: the best T is then as large as allowed, 100)."""
    from audiocnn.experiment import evaluate_model

    root = tmp_path_factory.mktemp("calibrated")
    cfg = tiny_config(root, "model=cnn", "trainer.calibrate=temperature", "trainer.max_epochs=6",
                      "data.clips_per_class=12", "optimizer.lr=0.003",
                      "evaluate.explain=false", "tracking.export_onnx=false")
    summary = train(cfg)
    evaluate_model(job_of(cfg))
    return cfg, summary


def test_the_train_stage_stores_a_temperature_that_lowers_the_val_nll(calibrated):
    cfg, summary = calibrated
    model, bundle = load_bundle(cfg.paths.models)
    fitted = temperature(bundle)
    assert fitted != 1.0 and 0.01 < fitted < 100 and summary["temperature"] == fitted
    data = data_module(cfg)
    logits, labels, counts = window_logits(WindowScorer(model), data.sliding_dataloader("val"),
                                           torch.device("cpu"))
    assert len(counts) == len(data.rows("val")) > 0
    before, after = (float(clip_nll(logits.double(), counts, labels, t)) for t in (1.0, fitted))
    assert after < before
    client = mlflow.MlflowClient(cfg.tracking.uri)
    metrics = client.get_run(summary["run_id"]).data.metrics
    assert metrics["temperature"] == pytest.approx(fitted, abs=1e-6)  # evaluate logs it again, to 6 decimals
    assert metrics["val_nll_uncalibrated"] == pytest.approx(before, rel=1e-4)
    assert metrics["val_nll_calibrated"] == pytest.approx(after, rel=1e-4)


def test_evaluate_reports_the_ece_before_and_after_the_temperature(calibrated, tmp_path):
    from audiocnn.evaluation.evaluate import evaluate
    from audiocnn.experiment import evaluate_job

    cfg, summary = calibrated
    report = json.loads((Path(cfg.paths.metrics) / "test.json").read_text())
    assert report["temperature"] == pytest.approx(summary["temperature"], abs=1e-6)
    metrics = mlflow.MlflowClient(cfg.tracking.uri).get_run(summary["run_id"]).data.metrics
    assert metrics["test_ece"] == report["ece"] and metrics["test_ece_uncalibrated"] == report["ece_uncalibrated"]
    # the uncalibrated ECE is the ECE of the same model at T = 1
    uncalibrated = cfg.copy()
    uncalibrated.paths.models = str(with_temperature(Path(cfg.paths.models), 1.0, tmp_path / "models"))
    uncalibrated.paths.metrics = str(tmp_path / "metrics")
    (tmp_path / "models" / "run.json").write_text((Path(cfg.paths.models) / "run.json").read_text())
    at_1 = evaluate(evaluate_job(job_of(uncalibrated)))
    assert at_1["ece"] == report["ece_uncalibrated"] == at_1["ece_uncalibrated"]
    assert at_1["temperature"] == 1.0
    # accuracy is unchanged by T; the confidences are not
    assert at_1["accuracy"] == report["accuracy"]
    confidences = pd.read_csv(tmp_path / "metrics" / "predictions.csv")["confidence"]
    assert not np.allclose(confidences, pd.read_csv(Path(cfg.paths.metrics) / "predictions.csv")["confidence"])


def test_predict_applies_the_stored_temperature_and_reproduces_evaluate(calibrated):
    cfg, _ = calibrated
    rows = pd.read_csv(Path(cfg.paths.metrics) / "predictions.csv", dtype={"actual": str, "predicted": str})
    records = load_model(cfg.paths.models).predict(rows["path"].tolist())
    assert [r["label"] for r in records] == rows["predicted"].tolist()
    np.testing.assert_allclose([r["confidence"] for r in records], rows["confidence"], atol=1e-4)


def test_calibrating_without_val_clips_fails_before_training(prepared_store, tmp_path):
    """A manifest whose val clips were moved to train (prepare itself refuses an empty split): one line
    naming trainer.calibrate, before any fit, and no model written."""
    shutil.copytree(prepared_store.paths.prepared, tmp_path / "prepared")
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.loc[manifest["split"] == "val", "split"] = "train"
    manifest.to_csv(tmp_path / "prepared" / "manifest.csv", index=False)
    cfg = tiny_config(tmp_path, "model=cnn", "trainer.calibrate=temperature", f"paths.prepared={tmp_path / 'prepared'}",
                      f"paths.features={prepared_store.paths.features}")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value).startswith("trainer.calibrate=temperature: the val split has no clips")
    assert "\n" not in str(error.value)
    assert not (Path(cfg.paths.models) / "model.pt").exists() and not (Path(cfg.paths.models) / "best.ckpt").exists()
