"""Test-time augmentation and temperature: one window's class probabilities from shifted views of it.

A view shifts a log-CQT window `(..., n_bins, frames)` by `k` bins along frequency (on a CQT
a pitch shift: one semitone is `bins_per_octave / 12` bins; k > 0 is up) and by `t` frames
along time (t > 0 is later). What a shift moves out of the window is dropped and what it
opens is filled with the spectrogram's floor, `log(features.amin)` (the log-CQT of silence,
`features.cqt.LogCQT`), never wrapped around. The window's probabilities are the mean over
the views of `softmax(logits / temperature)`; with the identity view only and temperature 1
they are exactly `softmax(logits)`. Evaluate (`evaluation.scoring`), `Predictor` and the exported
graph (`inference.graph.ChunkScorer`) all score windows with `window_probabilities`.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from omegaconf import ListConfig
from torch import Tensor, nn

from audiocnn.errors import ConfigError
from audiocnn.features.cqt import CQTFrontend


MAX_VIEWS = 64  # pitch shifts x time shifts: a bound on the work a setting (or a served model's config) asks for


def _shifts(values, key: str) -> tuple[int, ...]:
    """`[-1, 0, 1]` -> `(-1, 0, 1)`; None or empty: `(0,)`; anything but a list of whole numbers: `ConfigError`."""
    if values is None:
        return (0,)
    is_list = isinstance(values, Sequence | ListConfig) and not isinstance(values, str | bytes)
    if is_list and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tuple(values) or (0,)
    raise ConfigError(f"tta.{key}={reprlib.repr(values)}: must be a list of whole numbers (shifts)")


@dataclass(frozen=True)
class Views:
    """The views of test-time augmentation: every (pitch bin shift, time frame shift) pair."""
    pitch_bins: tuple[int, ...] = (0,)
    time_frames: tuple[int, ...] = (0,)

    @classmethod
    def from_config(cls, tta: Mapping | None) -> "Views":
        """`evaluate.tta` / `predict --tta-*`: {pitch_bins: [...], time_frames: [...]}; None: identity."""
        tta = tta or {}
        return cls(*(_shifts(tta.get(key), key) for key in ("pitch_bins", "time_frames")))

    @property
    def shifts(self) -> list[tuple[int, int]]:
        return [(k, t) for k in self.pitch_bins for t in self.time_frames]

    @property
    def identity(self) -> bool:
        return self.shifts == [(0, 0)]

    def check(self, n_bins: int, window_frames: int, names: tuple[str, str] = ("tta.pitch_bins", "tta.time_frames")
              ) -> "Views":
        """`ConfigError` (naming the setting: `names`) when a shift would move everything out of the window
        (|k| >= n_bins, |t| >= window_frames); returns the views."""
        if len(self.shifts) > MAX_VIEWS:  # each view is a forward pass of every window
            raise ConfigError(f"{names[0]} x {names[1]}: {len(self.pitch_bins)} x {len(self.time_frames)} = "
                              f"{len(self.shifts)} views; at most {MAX_VIEWS}")
        for name, shifts, size, unit in ((names[0], self.pitch_bins, n_bins, "bins"),
                                         (names[1], self.time_frames, window_frames, "frames")):
            if any(abs(s) >= size for s in shifts):
                raise ConfigError(f"{name}={list(shifts)}: each shift must be smaller than the window's "
                                  f"{size} {unit}")
        return self

    def describe(self) -> str:
        return f"pitch_bins={list(self.pitch_bins)}, time_frames={list(self.time_frames)}"


def shift(x: Tensor, bins: int, frames: int, floor: float) -> Tensor:
    """`x` (..., n_bins, n_frames) shifted up by `bins` and later by `frames`, padded with `floor`."""
    if bins == 0 and frames == 0:
        return x
    n_bins, n_frames = x.shape[-2], x.shape[-1]
    padded = nn.functional.pad(x, (max(frames, 0), max(-frames, 0), max(bins, 0), max(-bins, 0)), value=floor)
    return padded[..., max(-bins, 0): max(-bins, 0) + n_bins, max(-frames, 0): max(-frames, 0) + n_frames]


def view_logits(model: nn.Module, x: Tensor, views: Views, floor: float) -> Tensor:
    """`(batch, 1, n_bins, frames)` windows -> `(n_views, batch, n_classes)` logits. A model trained on
    the fly (`nn.Sequential(CQTFrontend, model)`, taking waveforms) is shifted after its front-end."""
    if views.identity:
        return model(x)[None]
    if isinstance(model, nn.Sequential) and isinstance(model[0], CQTFrontend):
        x, model = model[0](x), model[1]
    stacked = torch.cat([shift(x, k, t, floor) for k, t in views.shifts])  # (n_views * batch, 1, bins, frames)
    return model(stacked).reshape(len(views.shifts), x.shape[0], -1)


def combine(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """`(n_views, batch, n_classes)` logits -> `(batch, n_classes)`: mean over views of softmax(logits / T)."""
    if temperature != 1.0:
        logits = logits / temperature
    return logits.float().softmax(dim=-1).mean(dim=0)


def window_probabilities(model: nn.Module, x: Tensor, views: Views, floor: float, temperature: float = 1.0) -> Tensor:
    """`(batch, 1, n_bins, frames)` windows -> `(batch, n_classes)` probabilities (see the module docstring)."""
    return combine(view_logits(model, x, views, floor), temperature)
