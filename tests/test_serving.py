"""The logged model: a pyfunc registered as `audiocnn-<data>` that takes raw audio (base64 file
bytes or a float array with its rate) and answers class probabilities, in process and behind
the real `mlflow models serve`."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tests.conftest import stop_process, tiny_config
from tests.test_tracking import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(prepared_store, tmp_path_factory):
    """A tiny model trained with `tracking.log_model=true` and evaluated (predictions.csv)."""
    from audiocnn.evaluation.evaluate import evaluate
    from audiocnn.experiment import evaluate_job, job_of
    from tests.conftest import train

    root = tmp_path_factory.mktemp("serving")
    cfg = tiny_config(root, "augment=none", "scheduler=none",  # a model that hears rate and channels
                      f"paths.prepared={prepared_store.paths.prepared}",
                      f"paths.features={prepared_store.paths.features}", "tracking.log_model=true")
    summary = train(cfg)
    evaluate(evaluate_job(job_of(cfg)))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return cfg, summary, pd.read_csv(Path(cfg.paths.metrics) / "predictions.csv")


def encoded(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def test_the_best_model_is_registered_and_predicts_from_raw_audio(trained):
    cfg, summary, predictions = trained
    assert summary["registered_model"] == "models:/audiocnn-demo/1"
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = mlflow.pyfunc.load_model(summary["registered_model"])
    rows = predictions.head(3)
    answers = model.predict(pd.DataFrame({"audio_base64": [encoded(p) for p in rows["path"]]}))
    classes = json.loads((Path(cfg.paths.prepared) / "classes.json").read_text())
    for answer, (_, row) in zip(answers, rows.iterrows()):
        assert list(answer["probabilities"]) == [str(c) for c in classes]
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        # Same decode, CQT and sliding-window vote as the evaluate stage (which reads float16 frames).
        assert answer["label"] == row["predicted"]
        assert answer["probabilities"][row["predicted"]] == pytest.approx(row["confidence"], abs=5e-3)

    # A float array at another sample rate is resampled inside; stereo is averaged.
    samples, sr = sf.read(rows["path"].iloc[0], dtype="float32")
    stereo = np.stack([samples, samples], axis=1)
    from_array = model.predict({"samples": [stereo.tolist()], "sample_rate": [sr]})
    assert from_array[0]["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=1e-5)
    with pytest.raises(mlflow.exceptions.MlflowException, match="audio_base64, or samples and sample_rate"):
        model.predict(pd.DataFrame({"nothing": [1]}))  # a 400 over HTTP (tests/test_requests.py)
    from audiocnn.inference.requests import Limits

    assert model.unwrap_python_model().limits == Limits.from_settings(cfg.serving)  # logged with cfg.serving
    # The train stage's model declares its output schema and an input example, which it answers.
    from audiocnn.inference.pyfunc import OUTPUT_SCHEMA

    signature = mlflow.models.get_model_info(summary["registered_model"]).signature
    assert signature.outputs == OUTPUT_SCHEMA and signature.inputs is None
    example = mlflow.models.Model.load(summary["registered_model"]).load_input_example(summary["registered_model"])
    assert list(example) == ["audio_base64"] and model.predict(example)[0]["label"] in [str(c) for c in classes]


@pytest.fixture(scope="module")
def confident(trained, tmp_path_factory):
    """The trained model with its last layer's logits scaled up 50 times, logged as the pyfunc the
    train stage logs (`log_audio_model`) and loaded back: two epochs leave the tiny model's answers
    close to uniform, which would hide a wrong downmix or resampling; this one's answers move."""
    import torch

    from audiocnn import tracking
    from audiocnn.inference.pyfunc import log_audio_model
    from audiocnn.models.bundle import load_bundle as load_trained

    cfg, _, predictions = trained
    model, bundle = load_trained(cfg.paths.models)
    last = [name for name, m in model.head.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    scaled = {f"head.{last}.weight", f"head.{last}.bias"}
    bundle["state_dict"] = {k: v * 50 if k in scaled else v for k, v in bundle["state_dict"].items()}
    path = tmp_path_factory.mktemp("confident") / "model.pt"
    torch.save(bundle, path)
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="confident"):
        info = log_audio_model(path)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.pyfunc.load_model(info.model_uri), cfg, predictions


def _wav_base64(samples: np.ndarray, sr: int) -> str:
    """A float WAV file of `samples` (`(samples,)` or `(samples, channels)`), base64-encoded."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sr, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


def _probabilities(answer: dict) -> np.ndarray:
    return np.array(list(answer["probabilities"].values()))


def _largest_gap(a: dict, b: dict) -> float:
    return float(np.abs(_probabilities(a) - _probabilities(b)).max())


@pytest.mark.parametrize("rate", [22050, 44100])
def test_a_clip_sent_at_another_rate_gets_the_answer_of_the_original(confident, rate):
    """The same clip resampled by a reference resampler (soxr, very high quality) from its 16 kHz to
    `rate` and sent as samples with `sample_rate=rate`, or as a WAV file at that rate, is resampled back
    inside and answered as the original. Sending those samples as if they were 16 kHz (a model that
    ignored the rate) answers differently, so the check can tell the two apart."""
    import soxr

    model, cfg, predictions = confident
    samples, sr = sf.read(predictions["path"].iloc[0], dtype="float32")
    assert sr == cfg.features.sr == 16000
    original = model.predict({"samples": [samples.tolist()], "sample_rate": [sr]})[0]
    resampled = soxr.resample(samples, sr, rate, quality="VHQ").astype(np.float32)

    as_samples = model.predict({"samples": [resampled.tolist()], "sample_rate": [rate]})[0]
    as_file = model.predict(pd.DataFrame({"audio_base64": [_wav_base64(resampled, rate)]}))[0]
    assert _largest_gap(as_samples, original) < 0.01
    assert _largest_gap(as_file, original) < 0.01
    assert as_samples["label"] == as_file["label"] == original["label"]

    misread = model.predict({"samples": [resampled.tolist()], "sample_rate": [sr]})[0]
    assert _largest_gap(misread, original) > 5 * max(_largest_gap(as_samples, original), 0.01)


def test_a_stereo_clip_is_answered_as_the_mean_of_its_channels(confident):
    """Stereo with different channels (two test clips of different classes, left and right) is
    downmixed as the mean: the answer equals that for the mono mean of the two channels, as samples
    and as a WAV file, and differs from the answer for either channel alone or for their sum."""
    model, cfg, predictions = confident
    first = predictions.iloc[0]
    second = predictions[predictions["actual"] != first["actual"]].iloc[0]
    left, sr = sf.read(first["path"], dtype="float32")
    right, _ = sf.read(second["path"], dtype="float32")
    length = min(len(left), len(right))
    stereo = np.stack([left[:length], right[:length]], axis=1)
    mean = stereo.mean(axis=1)

    def answer(samples: np.ndarray) -> dict:
        return model.predict({"samples": [samples.tolist()], "sample_rate": [sr]})[0]

    expected = answer(mean)
    from_samples = answer(stereo)
    from_file = model.predict(pd.DataFrame({"audio_base64": [_wav_base64(stereo, sr)]}))[0]
    assert from_samples["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert from_file["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    for other in (left[:length], right[:length], stereo.sum(axis=1)):
        assert _largest_gap(answer(other), expected) > 0.02


def test_the_logged_model_keeps_model_pt_for_transfer_and_ensembles(trained):
    from audiocnn.models.bundle import load_bundle as load_trained, weights_file

    cfg, summary, _ = trained
    mlflow.set_tracking_uri(cfg.tracking.uri)
    for source in (f"runs:/{summary['run_id']}/model", summary["registered_model"], summary["run_id"]):
        assert weights_file(source).name == "model.pt"
    model, bundle = load_trained(summary["registered_model"])
    assert bundle["features"]["sr"] == cfg.features.sr and not model.training
    # Code-based logging: the model folder holds the code, not a pickle.
    local = Path(mlflow.artifacts.download_artifacts(summary["registered_model"]))
    assert (local / "pyfunc.py").exists() and (local / "artifacts/model.pt").exists()
    assert not list(local.rglob("*.pkl")) and "loader_module: mlflow.pyfunc.loaders.code_model" in (
        local / "MLmodel").read_text()


def wait_for(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


@contextlib.contextmanager
def served(model: str | Path, cwd: Path, env: dict | None = None,
           preexec_fn=None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow models serve` of `model` (a folder or a URI) on a free local port, offline: (its base URL,
    the process) once it answers `/ping`; stopped on leaving. `env`: added to the environment;
    `preexec_fn`: run in the server's process before it starts (a resource limit)."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [str(mlflow_bin), "models", "serve", "-m", str(model), "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port)],
        # the server runs `uvicorn` from PATH: the environment's bin folder, as in an activated venv
        env={**os.environ, **(env or {}), "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ['PATH']}"},
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn)
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop_process(process)


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_a_posted_wav_file(trained, tmp_path):
    cfg, summary, predictions = trained
    with served(summary["registered_model"], tmp_path, env={"MLFLOW_TRACKING_URI": cfg.tracking.uri}) as (url, _):
        row = predictions.iloc[0]
        answer = post(f"{url}/invocations",
                      {"dataframe_records": [{"audio_base64": encoded(row["path"])}]})["predictions"][0]
        assert answer["label"] == row["predicted"]
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        samples, sr = sf.read(row["path"], dtype="float32")
        from_array = post(f"{url}/invocations",
                          {"inputs": {"samples": [samples.tolist()], "sample_rate": [sr]}})["predictions"][0]
        assert from_array["label"] == row["predicted"]
        assert from_array["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-5)
        # The input example logged with the model, as MLflow stored it for serving, is answered 200.
        mlflow.set_tracking_uri(cfg.tracking.uri)
        local = Path(mlflow.artifacts.download_artifacts(summary["registered_model"], dst_path=str(tmp_path / "m")))
        example = json.loads((local / "serving_input_example.json").read_text())
        answered = post(f"{url}/invocations", example)["predictions"]
        assert [list(one) for one in answered] == [["label", "probabilities"]]

