"""`Predictor`: a trained model ready to score waveforms, the way the evaluate stage scores clips.

waveform `(samples,)` at `features.sr`
  -> the model's CQT front-end (its own kernels when it was trained on the fly) -> frames
     `(frames, n_bins)`, rounded to float16 as the feature store holds them
  -> every window of the sliding grid (`window_starts(..., "sliding")`, cut as training cuts them)
  -> the model's logits per window -> `vote`: mean of the windows' softmax = `(n_classes,)`
Decoding and resampling to `features.sr` are `audiocnn.data.audio`'s, shared with every stage.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from audiocnn.features.cqt import LogCQT
from audiocnn.models.bundle import load_bundle
from audiocnn.training.vote import vote
from audiocnn.training.windows import cut_window, window_starts


class Predictor:
    """`Predictor.load(source)`: any model source `audiocnn.models.bundle.weights_file` takes."""

    def __init__(self, model: nn.Module, bundle: dict):
        features = bundle["features"]
        self.classes: list[str] = [str(c) for c in bundle["classes"]]
        self.features = dict(features)
        self.sr, self.window = int(features["sr"]), int(features["window_frames"])
        self.floor = math.log(features["amin"])
        if features.get("on_the_fly"):  # trained on the fly: its own (possibly trained) CQT kernels
            frontend, self.model = model
            self.cqt = frontend.cqt
        else:
            self.model, self.cqt = model, LogCQT.from_config(features).eval()

    @classmethod
    def load(cls, source: str | Path) -> "Predictor":
        return cls(*load_bundle(source))

    @torch.inference_mode()
    def frames(self, waveform: Tensor) -> np.ndarray:
        """`(samples,)` at `self.sr` -> `(frames, n_bins)` float16 log-CQT frames."""
        return self.cqt(waveform[None])[0].T.to(torch.float16).contiguous().numpy()

    def windows(self, frames: np.ndarray) -> Tensor:
        """`(frames, n_bins)` -> `(n_windows, 1, n_bins, window)` float32, the sliding grid."""
        starts = window_starts(len(frames), self.window, "sliding")
        return torch.from_numpy(np.stack([cut_window(frames, s, self.window, self.floor) for s in starts])[:, None])

    @torch.inference_mode()
    def probabilities(self, waveform: Tensor) -> Tensor:
        """`(samples,)` at `self.sr` -> `(n_classes,)`: mean of the sliding windows' softmax."""
        windows = self.windows(self.frames(waveform))
        return vote(self.model(windows), [len(windows)])[0]
