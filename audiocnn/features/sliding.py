"""Sliding-window scoring, written once: which windows a clip is scored by, and how their answers
make the clip's.

A clip of `frames` frames is scored by windows of `window` frames starting at `window_starts`: every
`hop` frames (default: half a window), plus one window ending on the last frame when that grid does
not. Its class probabilities are the `vote`: the mean of its windows' probabilities. Every scorer
uses these two functions: evaluate's sliding windows and the temperature fit (`training.windows`,
`training.temperature`, `evaluation.scoring`), `inference.chunks` (the chunks `Predictor` and the
exported files score) and `Predictor`'s whole clips, so a clip gets the same windows and the same
answer wherever it is scored (`tests/test_one_scorer.py` checks that each of them calls them).

numpy and pure Python only: the onnxruntime path (`inference.exported`) imports no torch.
"""

from __future__ import annotations

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
