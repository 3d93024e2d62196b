"""The logged model: an MLflow pyfunc that takes raw audio and returns class probabilities.

Input (`audiocnn.inference.requests` has the exact rules): one clip per DataFrame row or
record, or one dict; over HTTP `{"dataframe_records": [...]}` or `{"inputs": {...}}`. A clip is
    audio_base64    a whole audio file (WAV, FLAC, OGG: anything libsndfile reads), base64
or
    samples         floats shaped `(samples,)` or `(samples, channels)`, with
    sample_rate     their rate in Hz (a number: one clip; a list: one rate per clip).
Inside, as the train/evaluate stages do: downmix, resample to `features.sr`, log-CQT
(nnAudio), every window of a sliding grid (hop = half a window), window probabilities
averaged per clip.
Output, one record per clip: {"label": best class, "probabilities": {class: p, ...}}.

Every request gets predictions or a refusal: a request the model cannot score (bad base64,
not audio, a channels-first array, a rate of 0 or 1e9, NaN or 1e30 samples, longer than
`serving.max_seconds`...) raises `MlflowException(reason, INVALID_PARAMETER_VALUE)`, which
`mlflow models serve` answers with HTTP 400 and `{"error_code", "message", "reason", ...}`:
`message` is MLflow's "Failed to predict data '<excerpt of the request>'. Error: <reason>",
`reason` the reason alone; no traceback. A failure inside the model is HTTP 500 with a one-line message
(the traceback goes to the server's log, not to the client). The limits are the `serving`
config group, stored as the logged model's `model_config`, with the test-time views (`evaluate.tta`).

The model directory holds `artifacts/model.pt` (the train stage's bundle: weights,
model/features configs, class names, temperature; checked and built through the allow-list of
`audiocnn.models.bundle`) and this file, logged as code (`python_model=<this file>`),
so nothing is unpickled. Scoring is `Predictor`'s: the evaluate stage's windows and vote,
the logits divided by the bundle's temperature, averaged over the test-time views it was logged with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from audiocnn.data.audio import from_samples
from audiocnn.errors import RequestError
from audiocnn.inference.predictor import Predictor
from audiocnn.inference.requests import ONE_CLIP, Limits, as_records, parse_clip
from audiocnn.models.tta import Views

LOG = logging.getLogger(__name__)

# What loading the model needs; pinning them skips MLflow's slow requirement inference.
MODEL_REQUIREMENTS = ["torch", "torchaudio", "nnAudio", "soundfile", "soxr", "audiocnn"]
TTA_KEY = "tta"  # the `model_config` entry of the test-time views; the others are the `serving` limits


class AudioClassifier(mlflow.pyfunc.PythonModel):
    """Raw audio -> class probabilities (see the module docstring for the input and output)."""

    def load_context(self, context) -> None:
        settings = dict(getattr(context, "model_config", None) or {})
        # The test-time views it was logged with (`evaluate.tta`, checked and bounded: `models.tta.Views`).
        self.predictor = Predictor.load(context.artifacts["model.pt"], tta=settings.pop(TTA_KEY, None))
        self.classes = self.predictor.classes
        # The limits it was logged with (`serving`); a model logged before they existed: the defaults.
        self.limits = Limits.from_settings(settings, where="model_config")

    def waveform(self, record: dict):
        """One clip's record -> mono float32 `(samples,)` at the model's `features.sr`; `RequestError`
        when the record is not a clip the model may score (`audiocnn.inference.requests`)."""
        samples, rate = parse_clip(record, self.limits)
        return from_samples(samples, rate, self.predictor.sr)

    def waveforms(self, model_input) -> list:
        """Every clip of the request, decoded and checked before any is scored."""
        records = as_records(model_input)
        if not records:
            raise RequestError(f"the request holds no clips; send {ONE_CLIP}")
        waveforms = []
        for row, record in enumerate(records):
            try:
                waveforms.append(self.waveform(record))
            except RequestError as error:
                raise RequestError(f"clip {row}: {error}" if len(records) > 1 else str(error)) from None
        return waveforms

    # Annotated as a DataFrame (what MLflow passes for `dataframe_records`): MLflow then neither
    # converts the input nor warns; dicts (one clip or columns) and lists of records are accepted as well.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[dict]:
        try:
            waveforms = self.waveforms(model_input)
        except RequestError as error:  # HTTP 400 with the reason; `from None`: no traceback goes with it
            # The scoring server prefixes `message` with an excerpt of the request; `reason` stays ours alone.
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE, reason=str(error)) from None
        try:
            predictions = []
            for waveform in waveforms:
                probs = self.predictor.probabilities(waveform).tolist()
                predictions.append({"label": self.classes[int(np.argmax(probs))],
                                    "probabilities": dict(zip(self.classes, probs))})
            return predictions
        except Exception as error:  # noqa: BLE001 - the model's fault, not the client's: 500, trace in the log
            LOG.exception("scoring failed")
            raise MlflowException(f"internal error while scoring ({type(error).__name__}); see the server log",
                                  error_code=INTERNAL_ERROR) from None


def model_config(serving: Mapping | None = None, tta: Mapping | None = None) -> dict:
    """The logged model's `model_config`: the request limits `serving` (the `serving` config group;
    None: the defaults) and, unless they are the identity, the test-time views `tta` (`evaluate.tta`)."""
    config = Limits.from_settings(serving).as_dict()
    views = Views.from_config(tta)
    if not views.identity:
        config[TTA_KEY] = {"pitch_bins": list(views.pitch_bins), "time_frames": list(views.time_frames)}
    return config


def log_audio_model(bundle: Path, registered_model: str | None = None, config: dict | None = None):
    """Log `bundle` (a train stage `model.pt`) as the active run's pyfunc `model` with `config`
    (`model_config(...)`; None: the defaults); register it as `registered_model` when given.
    Returns MLflow's ModelInfo."""
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(__file__).resolve()), artifacts={"model.pt": str(bundle)},
        model_config=config or model_config(), pip_requirements=MODEL_REQUIREMENTS,
        registered_model_name=registered_model or None,
    )


if __name__ != "audiocnn.inference.pyfunc":  # loaded by MLflow as the logged model's code
    mlflow.models.set_model(AudioClassifier())
