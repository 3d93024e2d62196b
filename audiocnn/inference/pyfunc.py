"""The logged model: an MLflow pyfunc that takes raw audio and returns class probabilities.

Input (`audiocnn.inference.requests` has the exact rules): one clip per DataFrame row or
record, or one dict; over HTTP `{"dataframe_records": [...]}` or `{"inputs": {...}}` (e.g.
`{"inputs": {"audio_base64": "..."}}`, `{"inputs": {"samples": [...], "sample_rate": 16000}}`). A clip is
    audio_base64    a whole audio file (WAV, FLAC, OGG: anything libsndfile reads), base64
or
    samples         floats shaped `(samples,)` or `(samples, channels)`, with
    sample_rate     their rate in Hz (a number: one clip; a list: one rate per clip).
Inside, as the train/evaluate stages do: downmix, resample to `features.sr`, log-CQT
(nnAudio), every window of a sliding grid (hop = half a window), window probabilities
averaged per clip.
Output, one record per clip: {"label": best class, "probabilities": {class: p, ...}}; a
multi-label model adds "labels": [class, ...], every class at or over its threshold (model.pt's
`thresholds`), most probable first, and its probabilities are a sigmoid per class. An events model
(docs/events.md) adds "events": [{"onset", "offset", "label", "score"}, ...] (seconds from the clip's
start, onset order; `Predictor.events` with the decoding stored in model.pt).

Signature: the logged model declares its output schema (`OUTPUT_SCHEMA`: `label` string,
`probabilities` map of doubles) and an input example (`input_example()`: 0.1 s of a sine as a
base64 WAV, scored once at log time by MLflow's validation, ~1 s; served as
`{"inputs": {"audio_base64": "..."}}`); the request's fields are described in the MLmodel's
`metadata` (`REQUEST_FIELDS`), not as the signature's inputs. MLflow 3.17 enforces a declared
input schema before `predict` sees the request, and no input schema left our checks in charge
(tried on tests/test_requests.py's refusals): every schema drops unknown fields (so "unknown
field 'sampels'" is lost); with `AnyType` columns `{"samples": [400 floats], "sample_rate":
16000}` becomes 400 one-sample clips; with typed columns (string, Array(double), double) 2-D
`samples` and an int `sample_rate` are refused with MLflow's generic "Failed to enforce schema"
(21 refusals lost their reason). A signature inferred from `predict`'s type hints is not enforced
that way, but then the scoring server takes only `{"inputs": ...}` (no `dataframe_records`) and
converts the input to the hinted type. So the signature has outputs only, and the checks stay ours.

A request's cost is checked before anything is decoded (clips per request, samples x channels
from each array's shape or file's header: `requests.request_cost`), files are decoded in blocks
and downmixed block by block, and the decoding and scoring of all requests of a worker process
share a budget of `serving.max_samples_in_flight` samples (`requests.Budget`).

Every request gets predictions or a refusal: a request the model cannot score (bad base64,
not audio, a channels-first array, a rate of 0 or 1e9, NaN or 1e30 samples, longer than
`serving.max_seconds`, more than `serving.max_clips` clips or `serving.max_request_samples`
samples...) raises `MlflowException(reason, INVALID_PARAMETER_VALUE)`, which
`mlflow models serve` answers with HTTP 400 and `{"error_code", "message", "reason", ...}`:
`message` is MLflow's "Failed to predict data '<excerpt of the request>'. Error: <reason>",
`reason` the reason alone; no traceback. A request that finds no room in the budget within
`serving.queue_seconds` gets HTTP 503 (`TEMPORARILY_UNAVAILABLE`, "the server is busy ...; retry
later"). Once the server's own request timeout (`MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`, `mlflow
models serve -t`, after which it has answered 504) has passed, the model stops scoring that
request between clips. A failure inside the model is HTTP 500 with a one-line message
(the traceback goes to the server's log, not to the client). The limits are the `serving`
config group, stored as the logged model's `model_config`, with the test-time views (`evaluate.tta`).

The model directory holds `artifacts/model.pt` (the train stage's bundle: weights,
model/features configs, class names, temperature; checked and built through the allow-list of
`audiocnn.models.bundle`) and this file, logged as code (`python_model=<this file>`),
so nothing is unpickled. Scoring is `Predictor`'s: the evaluate stage's windows and vote,
the logits divided by the bundle's temperature, averaged over the test-time views it was logged with.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import (DEADLINE_EXCEEDED, INTERNAL_ERROR, INVALID_PARAMETER_VALUE,
                                          TEMPORARILY_UNAVAILABLE)
from mlflow.types.schema import Array, ColSpec, DataType, Map, Object, Property, Schema

from audiocnn.data.task import EVENTS, MULTILABEL
from audiocnn.errors import RequestError
from audiocnn.inference.api import answer_problem
from audiocnn.inference.predictor import Predictor
from audiocnn.inference.requests import (Budget, Busy, Limits, as_records, check_clip_count, clip_waveform,
                                         read_clip, request_cost)
from audiocnn.models.tta import Views

LOG = logging.getLogger(__name__)

# What loading the model needs; pinning them skips MLflow's slow requirement inference.
MODEL_REQUIREMENTS = ["torch", "torchaudio", "nnAudio", "soundfile", "soxr", "audiocnn"]
TTA_KEY = "tta"  # the `model_config` entry of the test-time views; the others are the `serving` limits
# One record per clip (declared, not enforced: MLflow checks only inputs).
OUTPUT_SCHEMA = Schema([ColSpec(DataType.string, "label"), ColSpec(Map(DataType.double), "probabilities")])
MULTILABEL_OUTPUT_SCHEMA = Schema([*OUTPUT_SCHEMA.inputs, ColSpec(Array(DataType.string), "labels")])
EVENT = Object([Property("onset", DataType.double), Property("offset", DataType.double),
                Property("label", DataType.string), Property("score", DataType.double)])
EVENTS_OUTPUT_SCHEMA = Schema([*MULTILABEL_OUTPUT_SCHEMA.inputs, ColSpec(Array(EVENT), "events")])
# A request's fields, for readers of the MLmodel (`metadata`); not the signature's inputs (module docstring).
REQUEST_FIELDS = {
    "audio_base64": "string: a whole audio file (WAV, FLAC, OGG...), base64; or",
    "samples": "floats shaped (samples,) or (samples, channels), with",
    "sample_rate": "their rate in Hz (a number)",
}


class AudioClassifier(mlflow.pyfunc.PythonModel):
    """Raw audio -> class probabilities (see the module docstring for the input and output)."""

    def load_context(self, context) -> None:
        settings = dict(getattr(context, "model_config", None) or {})
        # The test-time views it was logged with (`evaluate.tta`, checked and bounded: `models.tta.Views`).
        self.predictor = Predictor.load(context.artifacts["model.pt"], tta=settings.pop(TTA_KEY, None))
        self.classes = self.predictor.classes
        # The limits it was logged with (`serving`); a model logged before they existed: the defaults.
        self.limits = Limits.from_settings(settings, where="model_config")
        self.budget = Budget(self.limits.max_samples_in_flight)  # shared by the server's request threads

    def clips(self, model_input) -> list:
        """Every clip of the request, checked on its shape or header (nothing decoded), with its cost."""
        records = as_records(model_input)
        check_clip_count(records, self.limits)
        clips = []
        for row, record in enumerate(records):
            with _numbered(row, len(records)):
                clips.append(read_clip(record, self.limits))
        return clips

    def waveforms(self, clips: list) -> list:
        """Every clip decoded (files in blocks), checked and resampled: mono tensors at `features.sr`."""
        waveforms = []
        for row, clip in enumerate(clips):
            with _numbered(row, len(clips)):
                waveforms.append(torch.from_numpy(clip_waveform(clip, self.limits, self.predictor.sr)))
        return waveforms

    # Annotated as a DataFrame (what MLflow passes for `dataframe_records`): MLflow then neither
    # converts the input nor warns; dicts (one clip or columns) and lists of records are accepted as well.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[dict]:
        deadline = time.monotonic() + _server_timeout()
        try:
            clips = self.clips(model_input)
            cost = request_cost(clips, self.limits, self.predictor.sr)
            with self.budget.hold(cost, min(self.limits.queue_seconds, deadline - time.monotonic())):
                waveforms = self.waveforms(clips)
                del clips  # the encoded files and sent arrays are no longer needed here
                return self.score(waveforms, deadline)
        except RequestError as error:  # HTTP 400 with the reason; `from None`: no traceback goes with it
            # The scoring server prefixes `message` with an excerpt of the request; `reason` stays ours alone.
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE, reason=str(error)) from None
        except Busy as busy:  # HTTP 503: the client may retry
            raise MlflowException(str(busy), error_code=TEMPORARILY_UNAVAILABLE, reason=str(busy)) from None

    def score(self, waveforms: list, deadline: float) -> list[dict]:
        try:
            predictions = []
            for row, waveform in enumerate(waveforms):
                if time.monotonic() > deadline:  # the server has answered 504 already: stop working for nobody
                    reason = f"stopped after {row} of {len(waveforms)} clips: past the server's request timeout"
                    raise MlflowException(reason, error_code=DEADLINE_EXCEEDED, reason=reason)
                probs = self.predictor.probabilities(waveform).tolist()
                thresholds = self.predictor.thresholds  # multi-label: a sigmoid per class; None otherwise
                if problem := answer_problem(np.asarray(probs, dtype=float), len(self.classes),
                                             multilabel=thresholds is not None):
                    # NaN weights or temperature in the model file: never an answer (nor bare NaN in JSON)
                    LOG.error("clip %d: %s", row, problem)
                    raise MlflowException(f"internal error while scoring: {problem}", error_code=INTERNAL_ERROR)
                answer = {"label": self.classes[int(np.argmax(probs))], "probabilities": dict(zip(self.classes, probs))}
                if thresholds is not None:
                    order = np.argsort(-np.asarray(probs), kind="stable")  # most probable first, as the API
                    answer["labels"] = [self.classes[i] for i in order if probs[i] >= thresholds[i]]
                if self.predictor.event_record is not None:
                    answer["events"] = self.events(row, len(waveforms), waveform)
                predictions.append(answer)
            return predictions
        except (MlflowException, RequestError):  # RequestError: the client's (HTTP 400, in `predict`)
            raise
        except Exception as error:  # noqa: BLE001 - the model's fault, not the client's: 500, trace in the log
            LOG.exception("scoring failed")
            raise MlflowException(f"internal error while scoring ({type(error).__name__}); see the server log",
                                  error_code=INTERNAL_ERROR) from None


    def events(self, row: int, clips: int, waveform: torch.Tensor) -> list[dict]:
        """An events model's events in one clip (`Predictor.events`, the stored decoding), onset order; a
        clip too short to hold a frame is the client's fault (HTTP 400)."""
        try:
            detections = list(self.predictor.events(waveform.numpy(), self.predictor.sr))
        except ValueError as error:
            if not str(error).startswith("too short"):
                raise
            with _numbered(row, clips):
                raise RequestError(str(error)) from None
        return [{"onset": round(d.onset, 4), "offset": round(d.offset, 4), "label": d.label,
                 "score": round(d.score, 6)} for d in detections]


@contextmanager
def _numbered(row: int, clips: int):
    """Prefix a `RequestError` with `clip <row>: ` when the request holds several clips."""
    try:
        yield
    except RequestError as error:
        if clips > 1:
            raise RequestError(f"clip {row}: {error}") from None
        raise


def _server_timeout() -> float:
    """Seconds `mlflow models serve` gives a request before answering 504 (it sets
    MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT for its workers); no limit in process."""
    value = os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")
    try:
        return float(value) if value else float("inf")
    except ValueError:
        return float("inf")


def model_config(serving: Mapping | None = None, tta: Mapping | None = None) -> dict:
    """The logged model's `model_config`: the request limits `serving` (the `serving` config group;
    None: the defaults) and, unless they are the identity, the test-time views `tta` (`evaluate.tta`)."""
    config = Limits.from_settings(serving).as_dict()
    views = Views.from_config(tta)
    if not views.identity:
        config[TTA_KEY] = {"pitch_bins": list(views.pitch_bins), "time_frames": list(views.time_frames)}
    return config


def input_example(seconds: float = 0.1, sr: int = 16000) -> dict:
    """One clip as a request: `seconds` of a 440 Hz sine at `sr`, a 16-bit WAV in base64 (4.3 kB)."""
    t = np.arange(round(seconds * sr)) / sr
    buffer = io.BytesIO()
    sf.write(buffer, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return {"audio_base64": base64.b64encode(buffer.getvalue()).decode()}


def log_audio_model(bundle: Path, registered_model: str | None = None, config: dict | None = None,
                    task: str | None = None):
    """Log `bundle` (a train stage `model.pt`) as the active run's pyfunc `model` with `config`
    (`model_config(...)`; None: the defaults); register it as `registered_model` when given.
    Declares the output schema of the model's `task` (multi-label: with `labels`; events: with `labels` and
    `events`) and an input example (module docstring). Returns MLflow's ModelInfo."""
    schema = {MULTILABEL: MULTILABEL_OUTPUT_SCHEMA, EVENTS: EVENTS_OUTPUT_SCHEMA}.get(task, OUTPUT_SCHEMA)
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(__file__).resolve()), artifacts={"model.pt": str(bundle)},
        model_config=config or model_config(), pip_requirements=MODEL_REQUIREMENTS,
        signature=ModelSignature(outputs=schema),
        input_example=input_example(),
        metadata={"request": REQUEST_FIELDS}, registered_model_name=registered_model or None,
    )


if __name__ != "audiocnn.inference.pyfunc":  # loaded by MLflow as the logged model's code
    mlflow.models.set_model(AudioClassifier())
