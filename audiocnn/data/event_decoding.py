"""From a model's frame probabilities back to events: the inverse of `data.events.frame_targets`.

Numpy and scipy only, so evaluation and `predict` (the ONNX path included) decode alike. For each
class k, over the output frames t (frame t covers [t·h, (t+1)·h), h = `frame_seconds`, as in
`frame_targets`):

1. a median filter of `median_frames[k]` frames (odd; 1: none) over p_t, the edges repeated,
   which removes isolated spikes and fills isolated dips shorter than half its length;
2. the frames whose filtered probability is at least `thresholds[k]` are active;
3. runs of active frames separated by less than `min_gap` seconds become one;
4. runs shorter than `min_duration` seconds are dropped;
5. each run [first, stop) is an event from first·h to stop·h (plus `start_seconds`, where the
   frames begin in the recording), scored by the mean of its unfiltered probabilities.

Events on the frame grid come back exactly from their own frame targets (tested), so the two rules
agree. `PostProcessing` holds the settings; `problem` checks them (they reach a model file, so they
are untrusted there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_MEDIAN_FRAMES = 1001  # a median filter longer than this is a typo, and costs time per frame


@dataclass(frozen=True)
class Detection:
    """One detected event: `label` from `onset` to `offset` seconds, `score` its mean frame probability."""
    onset: float
    offset: float
    label: str
    score: float


@dataclass(frozen=True)
class PostProcessing:
    """Per-class `thresholds` (in [0, 1]) and `median_frames` (odd, >= 1; one int for every class), and
    `min_duration` / `min_gap` seconds (>= 0) for every class."""
    thresholds: Sequence[float]
    median_frames: int | Sequence[int] = 1
    min_duration: float = 0.0
    min_gap: float = 0.0

    def problem(self, n_classes: int) -> str | None:
        """What is wrong with these settings for `n_classes` classes (one line), or None."""
        if not isinstance(self.thresholds, (list, tuple, np.ndarray)) or len(self.thresholds) != n_classes:
            return f"thresholds: must be a list of {n_classes} numbers in [0, 1], one per class"
        for index, value in enumerate(self.thresholds):
            if not _number(value) or not 0.0 <= float(value) <= 1.0:
                return f"thresholds[{index}]={value!r:.40}: must be a number in [0, 1]"
        medians = self.medians(n_classes)
        if len(medians) != n_classes:
            return f"median_frames: must be one odd integer or a list of {n_classes}, one per class"
        for index, value in enumerate(medians):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or value % 2 == 0 \
                    or value > MAX_MEDIAN_FRAMES:
                return f"median_frames[{index}]={value!r:.40}: must be an odd integer in [1, {MAX_MEDIAN_FRAMES}]"
        for name in ("min_duration", "min_gap"):
            value = getattr(self, name)
            if not _number(value) or not 0.0 <= float(value) < math.inf:
                return f"{name}={value!r:.40}: must be a finite number of seconds >= 0"
        return None

    def medians(self, n_classes: int) -> list:
        """`median_frames` as one value per class."""
        if isinstance(self.median_frames, (list, tuple)):
            return list(self.median_frames)
        return [self.median_frames] * n_classes


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(float(value))


def active_runs(active: np.ndarray) -> list[tuple[int, int]]:
    """[(first, stop)] of the runs of True in a 1-D boolean array, in order."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def median_filtered(probabilities: np.ndarray, medians: Sequence[int]) -> np.ndarray:
    """`(frames, n_classes)` -> the same shape, class k median-filtered over `medians[k]` frames (odd; 1: as
    is), the edges repeated (step 1 of the module docstring)."""
    from scipy.ndimage import median_filter

    smoothed = np.array(probabilities, dtype=np.float64)
    for k, median in enumerate(medians):
        if median > 1:
            smoothed[:, k] = median_filter(smoothed[:, k], size=int(median), mode="nearest")
    return smoothed


def decode_events(probabilities: np.ndarray, frame_seconds: float, classes: Sequence[str], post: PostProcessing,
                  start_seconds: float = 0.0) -> list[Detection]:
    """`probabilities` `(frames, n_classes)` in [0, 1] -> the events (module docstring), sorted by onset, then
    class order. `ValueError` (one line) for settings `post.problem` refuses or a shape that does not fit."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(f"probabilities {list(probabilities.shape)}: expected (frames, {len(classes)})")
    if not (_number(frame_seconds) and frame_seconds > 0):
        raise ValueError(f"frame_seconds={frame_seconds!r}: must be a positive number of seconds")
    problem = post.problem(len(classes))
    if problem:
        raise ValueError(problem)
    detections = []
    smoothed_all = median_filtered(probabilities, post.medians(len(classes)))
    for k, (label, threshold) in enumerate(zip(classes, post.thresholds)):
        p, smoothed = probabilities[:, k], smoothed_all[:, k]
        runs = active_runs(smoothed >= float(threshold))
        merged: list[list[int]] = []
        for first, stop in runs:
            if merged and (first - merged[-1][1]) * frame_seconds < post.min_gap:
                merged[-1][1] = stop
            else:
                merged.append([first, stop])
        for first, stop in merged:
            if (stop - first) * frame_seconds < post.min_duration:
                continue
            detections.append(Detection(start_seconds + first * frame_seconds, start_seconds + stop * frame_seconds,
                                        label, float(p[first:stop].mean())))
    order = {name: index for index, name in enumerate(classes)}
    return sorted(detections, key=lambda d: (d.onset, order[d.label]))
