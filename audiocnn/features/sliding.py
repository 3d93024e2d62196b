"""Sliding-window scoring, written once: which windows a clip is scored by, and how their answers
make the clip's.

A clip of `frames` frames is scored by windows of `window` frames starting at `window_starts`: every
`hop` frames (default: half a window), plus one window ending on the last frame when that grid does
not. Its class probabilities are the `vote`: the mean of its windows' probabilities. Every scorer
uses these two functions: evaluate's sliding windows and the temperature fit (`training.windows`,
`training.temperature`, `evaluation.scoring`), `inference.chunks` (the chunks `Predictor` and the
exported files score) and `Predictor`'s whole clips, so a clip gets the same windows and the same
answer wherever it is scored (`tests/test_one_scorer.py` checks that each of them calls them).

An events model's frame outputs have their own grid (`event_window_count`, `central_span`,
`central_frames`): windows every half window, each output frame taken from the one window whose central
half holds it. The evaluate stage (`training.event_postprocessing.clip_frames`) and every backend's events
(`inference.event_stream`) use them.

numpy and pure Python only: the onnxruntime path (`inference.exported`) imports no torch.
"""

from __future__ import annotations

import math

import numpy as np


def default_hop(window: int) -> int:
    """The hop of evaluate's sliding windows when none is set: half a window (at least one frame)."""
    return max(window // 2, 1)


def window_starts(frames: int, window: int, hop: int | None = None) -> list[int]:
    """Start frames of the sliding windows over `frames` frames: 0, hop, 2 hop, ... (hop: default half
    a window) and, when that grid does not end on the last frame, one more window ending there; a clip
    shorter than a window has one window, at 0 (padded with the floor)."""
    slack = frames - window
    if slack <= 0:
        return [0]
    starts = list(range(0, slack + 1, hop or default_hop(window)))
    if starts[-1] != slack:
        starts.append(slack)  # the last window ends on the clip's last frame
    return starts


def vote(window_probabilities, counts: list[int]):
    """`(sum(counts), n_classes)` window probabilities, clip by clip (`counts[i]` windows of clip i, in
    order) -> `(len(counts), n_classes)`: each clip's mean over its windows.

    A numpy array gives a numpy array (the exported backends, `Predictor`); a torch tensor gives a
    tensor, differentiable (evaluate, the temperature fit)."""
    bounds = np.cumsum([0, *counts]).tolist()
    means = [window_probabilities[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])]
    if isinstance(window_probabilities, np.ndarray):
        return np.stack(means)
    from torch import stack  # a tensor: torch is loaded already

    return stack(means)


def event_window_count(n_frames: int, n_out: int) -> int:
    """How many windows of `n_out` output frames, starting every `default_hop(n_out)` output frames from
    0, score an events model's `n_frames` output frames: enough for the last to reach the last frame."""
    return math.ceil(max(n_frames - n_out, 0) / default_hop(n_out)) + 1


def central_span(index: int, count: int, n_frames: int, n_out: int) -> tuple[int, int]:
    """The output frames [lo, hi) taken from window `index` of `count` (`event_window_count`): those in its
    central half (positions n_out // 4 .. n_out // 4 + half), the first window also the frames before and
    the last the frames after, so each frame comes from exactly one window and away from window edges
    (where a window lacks context) except at the recording's ends. Window `index` starts at output frame
    `index * default_hop(n_out)`."""
    half, quarter = default_hop(n_out), n_out // 4
    lo = 0 if index == 0 else quarter + index * half
    hi = n_frames if index == count - 1 else quarter + (index + 1) * half
    return min(lo, n_frames), min(hi, n_frames)


def central_frames(scored: np.ndarray, first: int, count: int, n_frames: int) -> np.ndarray:
    """Windows `first .. first + len(scored) - 1` of `count` (`event_window_count`), scored as `(windows, n_out,
    n_classes)` frame outputs -> the output frames they give (`central_span` of each), in order."""
    n_out = scored.shape[1]
    half = default_hop(n_out)
    parts = []
    for row, index in enumerate(range(first, first + len(scored))):
        lo, hi = central_span(index, count, n_frames, n_out)
        parts.append(scored[row, lo - index * half: hi - index * half])
    return np.concatenate(parts)
