"""Serving answers every request with a prediction or a clear 4xx: hostile requests against a
logged pyfunc, in process (`mlflow.pyfunc.load_model`) and over a real `mlflow models serve`.

The model is an untrained bundle logged with `log_audio_model` (the point is the request
handling, not accuracy), with `serving.max_seconds=5` so a too-long clip stays small.
Every hostile input is built here by the test that sends it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from mlflow.exceptions import MlflowException

from audiocnn.errors import ConfigError
from audiocnn.experiment import job_of
from audiocnn.inference.pyfunc import OUTPUT_SCHEMA, log_audio_model, model_config
from audiocnn.inference.requests import Limits
from tests.conftest import tiny_classifier, untrained_bundle
from tests.test_serving_budget import silent_flac

SR = 16000
RNG = np.random.default_rng(0)


def noise(frames: int, channels: int | None = None) -> np.ndarray:
    shape = (frames,) if channels is None else (frames, channels)
    return RNG.uniform(-0.3, 0.3, shape).astype(np.float32)


def wav_base64(samples: np.ndarray, sr: int, subtype: str = "FLOAT") -> str:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sr, format="WAV", subtype=subtype)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[Path, list[str]]:
    """A model logged with the limits `{"max_seconds": 5}`, downloaded to a folder; with every
    warning and MLflow log line that logging it printed (as the train stage logs it)."""
    root = tmp_path_factory.mktemp("requests")
    bundle = untrained_bundle(root / "bundle")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_experiment("requests")  # not the experiment id an earlier module's store left active
    lines = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
    mlflow_log = logging.getLogger("mlflow")  # it does not propagate to the root logger: listen to it directly
    mlflow_log.addHandler(handler)
    try:
        with mlflow.start_run(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = log_audio_model(bundle, config=model_config({"max_seconds": 5}))
        lines += [f"{w.category.__name__}: {w.message}" for w in caught]
        return Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "model"))), lines
    finally:
        mlflow_log.removeHandler(handler)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def model_dir(logged) -> Path:
    return logged[0]


@pytest.fixture(scope="module")
def model(model_dir):
    return mlflow.pyfunc.load_model(str(model_dir))


# (case id, request, words the message must hold). Each builds its own hostile input.
BAD = [
    ("channels_first", lambda: {"samples": noise(16000, 6).T, "sample_rate": SR}, "looks channels-first.*(16000, 6)"),
    ("too_many_channels", lambda: {"samples": noise(100, 40), "sample_rate": SR}, "40 channels; at most serving.max_channels=32"),
    ("three_dimensions", lambda: {"samples": noise(400, 2)[None], "sample_rate": SR}, r"\(1, 400, 2\) has 3 dimensions"),
    ("rate_zero", lambda: {"samples": noise(400), "sample_rate": 0}, "sample_rate=0: a rate must be a positive"),
    ("rate_negative", lambda: {"samples": noise(400), "sample_rate": -16000}, "sample_rate=-16000: negative"),
    ("rate_fractional", lambda: {"samples": noise(400), "sample_rate": 16000.5}, "sample_rate=16000.5: not a whole number"),
    ("rate_1e9", lambda: {"samples": noise(400), "sample_rate": 1e9}, "sample_rate=1000000000: above serving.max_sample_rate=384000"),
    ("rate_below_1khz", lambda: {"samples": noise(400), "sample_rate": 1}, "sample_rate=1: below serving.min_sample_rate=1000"),
    ("rate_text", lambda: {"samples": noise(400), "sample_rate": "fast"}, "sample_rate='fast': must be a number of Hz"),
    ("rate_missing", lambda: {"samples": noise(400)}, "sample_rate: missing"),
    ("nan", lambda: {"samples": np.where(np.arange(400) == 7, np.nan, noise(400)), "sample_rate": SR}, "1 values are NaN or infinite"),
    ("inf", lambda: {"samples": np.full(400, np.inf), "sample_rate": SR}, "400 values are NaN or infinite"),
    ("amplitude_1e30", lambda: {"samples": np.full(400, 1e30), "sample_rate": SR}, "peak .x. = 1e\\+30 exceeds serving.max_amplitude=1000"),
    ("too_long", lambda: {"samples": noise(6000), "sample_rate": 1000}, "6000 samples at 1000 Hz = 6.0 s, longer than serving.max_seconds=5"),
    ("empty", lambda: {"samples": [], "sample_rate": SR}, "samples: empty"),
    ("one_number", lambda: {"samples": 0.5, "sample_rate": SR}, "samples: a single number"),
    ("ragged", lambda: [{"samples": [[0.1, 0.2], [0.3]], "sample_rate": SR}], "not a rectangular array of numbers"),
    ("text_samples", lambda: {"samples": ["a", "b"], "sample_rate": SR}, "not a rectangular array of numbers"),
    ("garbage_base64", lambda: {"audio_base64": base64.b64encode(RNG.bytes(3000)).decode()}, "3000 bytes that are not an audio file"),
    ("invalid_base64", lambda: {"audio_base64": "this is not base64!"}, "audio_base64: not valid base64"),
    ("empty_base64", lambda: {"audio_base64": ""}, "audio_base64: empty"),
    ("base64_not_text", lambda: pd.DataFrame({"audio_base64": [12345]}), "audio_base64: must be a base64 string"),
    ("wav_without_frames", lambda: {"audio_base64": wav_base64(np.zeros(0, np.float32), SR)}, "holds no audio frames"),
    ("wav_with_nan", lambda: {"audio_base64": wav_base64(np.where(np.arange(800) == 5, np.nan, noise(800)), SR)},
     "audio_base64: 1 values are NaN or infinite"),
    ("wav_at_500_hz", lambda: {"audio_base64": wav_base64(noise(500), 500)}, "file's sample rate=500: below serving.min_sample_rate"),
    ("wav_too_long", lambda: {"audio_base64": wav_base64(noise(6000), 1000)}, "lasts 6.0 s, longer than serving.max_seconds=5"),
    ("file_and_samples", lambda: {"audio_base64": wav_base64(noise(800), SR), "samples": noise(10), "sample_rate": SR},
     "not both"),
    ("unknown_field", lambda: {"sampels": noise(400), "sample_rate": SR}, "unknown field 'sampels'"),
    ("nothing", lambda: pd.DataFrame({"nothing": [1]}), "audio_base64, or samples and sample_rate"),
    ("column_lengths", lambda: {"samples": [noise(400), noise(400)], "sample_rate": [SR]}, "columns of different lengths"),
    ("bare_list", lambda: noise(400).tolist(), "unsupported input"),
    ("no_clips", lambda: pd.DataFrame({"samples": [], "sample_rate": []}), "the request holds no clips"),
    ("one_bad_clip_of_two", lambda: [{"samples": noise(400), "sample_rate": SR}, {"samples": noise(400), "sample_rate": 0}],
     "clip 1: sample_rate=0"),
    ("too_many_clips", lambda: [{"samples": [0.1, -0.1], "sample_rate": SR}] * 65,
     "the request holds 65 clips; at most serving.max_clips=64"),
    # 3 FLACs of 8 channels x 384 kHz x 4.5 s: each within max_seconds=5, together 41.5 M samples x channels
    ("request_samples", lambda: pd.DataFrame({"audio_base64": [base64.b64encode(silent_flac(4.5)).decode()] * 3}),
     "the request's 3 clip.s. hold 41472000 samples x channels, .* more than serving.max_request_samples=32000000"),
]


@pytest.mark.parametrize("case, request_of, reason", BAD, ids=[case for case, _, _ in BAD])
def test_a_hostile_request_is_refused_with_its_reason_as_a_400(model, case, request_of, reason):
    with pytest.raises(MlflowException, match=reason) as refused:
        model.predict(request_of())
    error = refused.value
    assert error.error_code == "INVALID_PARAMETER_VALUE" and error.get_http_status_code() == 400
    body = json.loads(error.serialize_as_json())  # what the scoring server sends
    assert body["reason"] == body["message"]  # in process; the server prefixes `message` with the request
    assert "stack_trace" not in body and "Traceback" not in body["message"] and ".py" not in body["message"]
    assert error.__cause__ is None and error.__suppress_context__  # raised `from None`: no chained traceback


def test_good_requests_are_answered_one_prediction_per_clip(model):
    stereo = noise(400, 2)
    one = model.predict({"samples": stereo, "sample_rate": SR})  # ONE stereo clip, not 400 clips
    assert len(one) == 1 and sum(one[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    as_mono = model.predict({"samples": stereo.mean(axis=1), "sample_rate": SR})
    assert one[0]["probabilities"] == pytest.approx(as_mono[0]["probabilities"], abs=1e-5)
    columns = model.predict({"samples": [stereo, stereo], "sample_rate": [SR, SR]})  # columns: one entry per clip
    assert len(columns) == 2 and columns[0]["probabilities"] == pytest.approx(one[0]["probabilities"], abs=1e-5)
    records = model.predict(pd.DataFrame({"audio_base64": [wav_base64(stereo, SR, "PCM_16")] * 3}))
    assert len(records) == 3
    assert model.predict({"samples": noise(10), "sample_rate": 16001})[0]["label"] in ("zero", "one", "two")
    assert len(model.predict([{"samples": noise(4000), "sample_rate": 8000}, {"audio_base64": wav_base64(noise(99), SR)}])) == 2


def test_a_failure_inside_the_model_is_a_500_without_a_traceback(model, monkeypatch):
    def broken(waveform):
        raise RuntimeError("/srv/secret/path.py line 3: out of memory")

    monkeypatch.setattr(model.unwrap_python_model().predictor, "probabilities", broken)
    with pytest.raises(MlflowException, match=r"internal error while scoring \(RuntimeError\); see the server log") as failed:
        model.predict({"samples": noise(400), "sample_rate": SR})
    assert failed.value.get_http_status_code() == 500 and failed.value.__cause__ is None
    assert "secret" not in failed.value.serialize_as_json() and "stack_trace" not in failed.value.serialize_as_json()


def test_a_model_with_nan_weights_is_a_500_naming_it_never_a_nan_answer(model, monkeypatch):
    """#23 case 7 over the pyfunc: non-finite probabilities are never served (JSON has no NaN)."""
    import torch

    net = model.unwrap_python_model().predictor.model
    with torch.no_grad():
        for parameter in net.parameters():
            monkeypatch.setattr(parameter, "data", torch.full_like(parameter, float("nan")))
    with pytest.raises(MlflowException, match="probabilities are not finite") as failed:
        model.predict({"samples": noise(400), "sample_rate": SR})
    assert failed.value.get_http_status_code() == 500


def test_the_limits_travel_with_the_logged_model(model_dir, model, tmp_path):
    assert "max_seconds: 5" in (model_dir / "MLmodel").read_text()  # stored as the model's model_config
    assert model.unwrap_python_model().limits == Limits(max_seconds=5)
    assert tiny_classifier(tmp_path).limits == Limits()  # a model logged without limits: the defaults
    with pytest.raises(ConfigError, match="serving.max_seconds=nan: must be a finite number"):
        model_config({"max_seconds": float("nan")})
    with pytest.raises(ConfigError, match="serving.max_channels=2.5: must be an integer"):
        Limits.from_settings({"max_channels": 2.5})


def test_the_logged_model_declares_its_output_schema_and_an_input_example(logged, model):
    model_dir, printed = logged
    signature = mlflow.models.get_model_info(str(model_dir)).signature
    assert signature.outputs == OUTPUT_SCHEMA  # label: string, probabilities: map of doubles
    # No input schema: MLflow would enforce it before our checks (pyfunc's docstring); the example stands in.
    assert signature.inputs is None and model.metadata.get_input_schema() is None
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "saved_input_example_info" in mlmodel and '"name": "probabilities"' in mlmodel
    assert "audio_base64" in mlmodel  # the request's fields, in `metadata`
    served = json.loads((model_dir / "serving_input_example.json").read_text())
    assert list(served) == ["inputs"] and list(served["inputs"]) == ["audio_base64"]
    assert sum(f.stat().st_size for f in model_dir.glob("*example*.json")) < 12_000  # 0.1 s of 16-bit audio, twice
    answer = model.predict(served["inputs"])
    assert len(answer) == 1 and answer[0]["label"] in ("zero", "one", "two")
    assert sum(answer[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # Logging printed no signature or example complaint (the first two were printed at every training
    # before; the third is how MLflow reports an example that its log-time serving check cannot score),
    # nor any other warning.
    complaints = ("Failed to infer model signature", "input example was not provided", "Failed to validate")
    assert not [line for line in printed if any(words in line for words in complaints)], printed
    assert not [line for line in printed if line.startswith(("WARNING", "ERROR")) or "Warning:" in line], printed


def test_orchestration_logs_the_model_with_the_serving_config(tmp_path, monkeypatch):
    import contextlib

    from audiocnn import experiment
    from audiocnn.config import compose_config, validate_config

    logged = {}

    def fake_log(bundle, registered_model=None, serving=None, task=None):
        logged["serving"] = serving
        return type("Info", (), {"model_uri": "models:/m-1", "registered_model_version": None})()

    monkeypatch.setattr(experiment, "log_audio_model", fake_log)
    monkeypatch.setattr(experiment.tracking, "open_run", lambda cfg, run_id: contextlib.nullcontext())
    cfg = compose_config([f"paths.models={tmp_path}", "serving.max_seconds=30"])
    experiment.log_servable_model(job_of(cfg), {"run_id": "0" * 32})
    assert logged["serving"] == {**Limits().as_dict(), "max_seconds": 30}
    with pytest.raises(ConfigError, match="serving.min_sample_rate=0"):
        validate_config(compose_config(["serving.min_sample_rate=0"]))


# ----------------------------------------------------------------- over HTTP


def post(url: str, payload) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow  # a real server: ~15 s to start and answer on two cores
def test_mlflow_models_serve_answers_bad_requests_4xx_with_their_reason(model_dir, tmp_path):
    from tests.test_serving import served

    with served(model_dir, tmp_path) as (base, _):
        url = f"{base}/invocations"
        stereo = noise(400, 2).tolist()
        status, answer = post(url, {"inputs": {"samples": stereo, "sample_rate": SR}})
        assert status == 200 and len(answer["predictions"]) == 1  # one stereo clip
        status, answer = post(url, {"dataframe_records": [{"audio_base64": wav_base64(noise(800), SR)}]})
        assert status == 200 and len(answer["predictions"]) == 1
        status, answer = post(url, json.loads((model_dir / "serving_input_example.json").read_text()))
        assert status == 200 and [set(p) for p in answer["predictions"]] == [{"label", "probabilities"}], answer
        bad = [
            ({"inputs": {"samples": noise(16000, 6).T.tolist(), "sample_rate": SR}}, "looks channels-first"),
            ({"inputs": {"samples": noise(400).tolist(), "sample_rate": 0}}, "sample_rate=0"),
            ({"inputs": {"samples": noise(400).tolist(), "sample_rate": -8000}}, "sample_rate=-8000: negative"),
            ({"inputs": {"samples": noise(400).tolist(), "sample_rate": 16000.5}}, "not a whole number"),
            ({"inputs": {"samples": noise(400).tolist(), "sample_rate": 1e9}}, "above serving.max_sample_rate"),
            ({"inputs": {"samples": [1e30] * 400, "sample_rate": SR}}, "exceeds serving.max_amplitude"),
            ({"inputs": {"samples": noise(6000).tolist(), "sample_rate": 1000}}, "longer than serving.max_seconds=5"),
            ({"dataframe_records": [{"audio_base64": base64.b64encode(RNG.bytes(3000)).decode()}]},
             "not an audio file"),
            ({"dataframe_records": [{"audio_base64": "%%% not base64"}]}, "not valid base64"),
            ({"inputs": {"samples": [[0.1, 0.2], [0.3]], "sample_rate": [SR, SR]}}, "inhomogeneous"),  # MLflow's own
        ]
        for payload, reason in bad:
            status, body = post(url, payload)
            assert 400 <= status < 500, (reason, status, body)
            assert reason in body["message"], (reason, body)
            assert reason in body.get("reason", body["message"]), body  # MLflow's own refusals have no `reason`
            assert "stack_trace" not in body and "Traceback" not in json.dumps(body), body
            assert "/work/" not in json.dumps(body) and "site-packages" not in json.dumps(body), body
