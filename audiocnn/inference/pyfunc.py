"""The logged model: an MLflow pyfunc that takes raw audio and returns class probabilities.

Input, one row per clip (a pandas DataFrame, a dict of columns or a list of records;
over HTTP `{"dataframe_records": [...]}` or `{"inputs": {...}}`), either
    audio_base64    a whole audio file (WAV, FLAC, OGG: anything soundfile reads), base64
or
    samples         a float waveform (mono, or `(samples, channels)`), with
    sample_rate     its rate in Hz.
Inside, as the train/evaluate stages do: downmix, resample to `features.sr`, log-CQT
(nnAudio), every window of a sliding grid (hop = half a window), window probabilities
averaged per clip.
Output, one record per clip: {"label": best class, "probabilities": {class: p, ...}}.

The model directory holds `artifacts/model.pt` (the train stage's bundle: weights,
model/features configs, class names; checked and built through the allow-list of
`audiocnn.models.bundle`) and this file, logged as code (`python_model=<this file>`),
so nothing is unpickled. Scoring is `Predictor`'s: the evaluate stage's windows and vote.
"""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from audiocnn.data.audio import decode_bytes, from_samples
from audiocnn.inference.predictor import Predictor

# What loading the model needs; pinning them skips MLflow's slow requirement inference.
MODEL_REQUIREMENTS = ["torch", "torchaudio", "nnAudio", "soundfile", "soxr", "audiocnn"]


def as_records(model_input) -> list[dict]:
    """DataFrame / dict of columns / list of records -> list of {column: value}."""
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        columns = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in model_input.items()}
        if "samples" in columns and columns["samples"] and not isinstance(columns["samples"][0], (list, tuple)):
            columns = {k: [v] for k, v in columns.items()}  # one clip given as {"samples": [...], "sample_rate": n}
        if "audio_base64" in columns and isinstance(columns["audio_base64"], str):
            columns = {k: [v] for k, v in columns.items()}
        lengths = {len(v) for v in columns.values() if isinstance(v, (list, tuple))}
        return [{k: v[i] if isinstance(v, (list, tuple)) else v for k, v in columns.items()}
                for i in range(max(lengths, default=1))]
    if isinstance(model_input, list):
        return list(model_input)
    raise TypeError(f"unsupported input {type(model_input).__name__}; send rows with audio_base64, "
                    "or samples and sample_rate")


class AudioClassifier(mlflow.pyfunc.PythonModel):
    """Raw audio -> class probabilities (see the module docstring for the input and output)."""

    def load_context(self, context) -> None:
        self.predictor = Predictor.load(context.artifacts["model.pt"])
        self.classes = self.predictor.classes

    def waveform(self, record: dict):
        """One input row -> mono float32 `(samples,)` at the model's `features.sr` (`audiocnn.data.audio`)."""
        sr = self.predictor.sr
        encoded = record.get("audio_base64")
        if isinstance(encoded, str) and encoded:
            return decode_bytes(base64.b64decode(encoded), sr)
        samples = record.get("samples")
        if samples is not None and record.get("sample_rate"):
            return from_samples(samples, int(record["sample_rate"]), sr)
        raise ValueError("each row needs audio_base64, or samples and sample_rate")

    # Annotated as a DataFrame (what MLflow passes for `dataframe_records`): MLflow then neither
    # converts the input nor warns; dicts of columns and lists of records are accepted as well.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[dict]:
        predictions = []
        for record in as_records(model_input):
            probs = self.predictor.probabilities(self.waveform(record)).tolist()
            predictions.append({"label": self.classes[int(np.argmax(probs))],
                                "probabilities": dict(zip(self.classes, probs))})
        return predictions


def log_audio_model(bundle: Path, registered_model: str | None = None):
    """Log `bundle` (a train stage `model.pt`) as the active run's pyfunc `model`; register it
    as `registered_model` when given. Returns MLflow's ModelInfo."""
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(__file__).resolve()), artifacts={"model.pt": str(bundle)},
        pip_requirements=MODEL_REQUIREMENTS, registered_model_name=registered_model or None,
    )


if __name__ != "audiocnn.inference.pyfunc":  # loaded by MLflow as the logged model's code
    mlflow.models.set_model(AudioClassifier())
