"""Frame probabilities and annotations in the form sed_scores_eval takes (docs/events.md, "Metrics").

sed_scores_eval (the DCASE task 4 baselines' evaluation library) scores a system by its frame scores,
threshold-independently: per audio id a DataFrame with the columns `onset`, `offset` (each frame's
start and end, seconds; frames touch) and one score column per class; the truth per audio id is a list
of `(onset, offset, label)`. The training stage's post-processing fit (`training.event_postprocessing`)
and the evaluate stage's PSDS (`evaluation.event_metrics`) both build their inputs here.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from types import ModuleType
from typing import Iterable, Sequence

import numpy as np
import pandas as pd


class WritableScores(pd.DataFrame):
    """A score DataFrame whose `to_numpy()` is a writable copy.

    sed_scores_eval 0.0.4, its last release, hands `DataFrame.to_numpy()` to Cython memoryviews, which
    refuse pandas 3's read-only views ("buffer source array is read-only"). The maintainers fixed it
    (fgnt/sed_scores_eval pull request 17, February 2026) after that release; until the next one, the
    scores are given as this subclass (pandas' documented `_constructor` protocol keeps the type through
    column selection)."""

    @property
    def _constructor(self):
        return WritableScores

    def to_numpy(self, *args, **kwargs) -> np.ndarray:
        return np.array(super().to_numpy(*args, **kwargs))


def score_frames(probabilities: np.ndarray, frame_seconds: float, classes: Sequence[str]) -> WritableScores:
    """`(frames, n_classes)` probabilities of frames `frame_seconds` long from time 0 -> sed_scores_eval's
    score DataFrame (frame t covers [t·h, (t+1)·h), as `data.events.frame_targets`)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    edges = np.arange(len(probabilities) + 1) * float(frame_seconds)
    table = np.concatenate([edges[:-1, None], edges[1:, None], probabilities], axis=1)
    return WritableScores(table, columns=["onset", "offset", *classes])


def classes_with_events(events: dict[str, list], classes: Sequence[str]) -> list[int]:
    """The indices of `classes` that have an event in `events` (audio id -> events): sed_scores_eval refuses
    a class without any."""
    present = {e.label for items in events.values() for e in items}
    return [k for k, label in enumerate(classes) if label in present]


def merge_overlaps(events: Iterable) -> list:
    """A clip's events (`data.events.Event`) with those of one class that overlap or touch joined into one
    (from the first onset to the last offset), sorted by class and onset. A frame-level system cannot tell
    two overlapping events of a class apart, and sed_scores_eval refuses them in the truth; both scorers
    get the merged truth."""
    merged: list = []
    for event in sorted(events, key=lambda e: (e.label, e.onset, e.offset)):
        last = merged[-1] if merged else None
        if last is not None and last.label == event.label and event.onset <= last.offset:
            merged[-1] = replace(last, offset=max(last.offset, event.offset))
        else:
            merged.append(event)
    return merged


def truth(events: Iterable) -> list[tuple[float, float, str]]:
    """A clip's events (`data.events.Event`) as sed_scores_eval's `(onset, offset, label)` list, overlaps of a
    class merged (`merge_overlaps`)."""
    return [(float(e.onset), float(e.offset), str(e.label)) for e in merge_overlaps(events)]


def sed_libraries() -> tuple[ModuleType, ModuleType]:
    """(sed_eval, sed_scores_eval), imported without the UserWarning of dcase_util's `import pkg_resources`
    (deprecated in setuptools 80, gone in 81: pyproject.toml pins setuptools<81 for it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        import sed_eval
        import sed_scores_eval
    return sed_eval, sed_scores_eval
