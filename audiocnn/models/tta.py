"""The setting of test-time augmentation: which views of a window are scored (`evaluate.tta`, `--tta-*`).

A view shifts a log-CQT window by `k` bins along frequency and by `t` frames along time;
`Views` holds every (k, t) pair and checks them against the window. Applying them (and the
temperature) is `models.scorer.WindowScorer`'s, the one place it is written.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Mapping, Sequence

from omegaconf import ListConfig

from audiocnn.errors import ConfigError


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
