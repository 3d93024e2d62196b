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
model/features configs, class names; loaded with `weights_only=True`) and this file,
logged as code (`python_model=<this file>`), so nothing is unpickled.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF

from audiocnn.features.cqt import LogCQT
from audiocnn.training.checkpoints import load_trained
from audiocnn.training.windows import cut_window, window_starts

# What loading the model needs; pinning them skips MLflow's slow requirement inference.
MODEL_REQUIREMENTS = ["torch", "torchaudio", "nnAudio", "soundfile", "audiocnn"]


def decode_audio(data: bytes, sr: int) -> torch.Tensor:
    """Encoded audio file bytes -> mono float32 waveform at `sr` Hz, `(samples,)`."""
    samples, file_sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return to_waveform(samples, file_sr, sr)


def to_waveform(samples, sample_rate: int, sr: int) -> torch.Tensor:
    """`(samples,)` or `(samples, channels)` floats -> mono float32 `(samples,)` at `sr` Hz.

    Same steps as `audiocnn.data.audio.load_audio`: average channels, zero non-finite
    samples, resample with torchaudio.
    """
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=1)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"samples: expected a non-empty (samples,) or (samples, channels) array, got {array.shape}")
    mono = torch.nan_to_num(torch.from_numpy(np.ascontiguousarray(array)), nan=0.0, posinf=0.0, neginf=0.0)
    return AF.resample(mono, int(sample_rate), sr) if int(sample_rate) != sr else mono


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
        self.model, bundle = load_trained(context.artifacts["model.pt"])
        self.classes: list[str] = [str(c) for c in bundle["classes"]]
        features = bundle["features"]
        self.sr, self.window = int(features["sr"]), int(features["window_frames"])
        self.floor = math.log(features["amin"])
        if features.get("on_the_fly"):  # trained on the fly: its own (possibly trained) CQT kernels
            frontend, self.model = self.model
            self.frontend = frontend.cqt
        else:
            self.frontend = LogCQT(**{k: features[k] for k in ("sr", "hop_length", "fmin", "n_bins",
                                                                 "bins_per_octave", "amin")}).eval()

    def waveform(self, record: dict) -> torch.Tensor:
        encoded = record.get("audio_base64")
        if isinstance(encoded, str) and encoded:
            return decode_audio(base64.b64decode(encoded), self.sr)
        samples = record.get("samples")
        if samples is not None and record.get("sample_rate"):
            return to_waveform(samples, int(record["sample_rate"]), self.sr)
        raise ValueError("each row needs audio_base64, or samples and sample_rate")

    @torch.inference_mode()
    def probabilities(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(samples,)` at `self.sr` -> `(n_classes,)`: mean of the sliding windows' softmax."""
        # (frames, n_bins) float16, as the feature store holds them (cut_window reads float16)
        frames = self.frontend(waveform[None])[0].T.to(torch.float16).contiguous().numpy()
        starts = window_starts(len(frames), self.window, "sliding")
        windows = np.stack([cut_window(frames, s, self.window, self.floor) for s in starts])[:, None]
        return self.model(torch.from_numpy(windows)).softmax(dim=1).mean(dim=0)

    # Annotated as a DataFrame (what MLflow passes for `dataframe_records`): MLflow then neither
    # converts the input nor warns; dicts of columns and lists of records are accepted as well.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[dict]:
        predictions = []
        for record in as_records(model_input):
            probs = self.probabilities(self.waveform(record)).tolist()
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


if __name__ != "audiocnn.serving":  # loaded by MLflow as the logged model's code
    mlflow.models.set_model(AudioClassifier())
