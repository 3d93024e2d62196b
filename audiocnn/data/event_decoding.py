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
    is), the edges repeated (step 1 of the module docstring): what `EventDecoder` does on a stream, on a
    whole recording."""
    p = np.asarray(probabilities, dtype=np.float64)
    r = max(medians) // 2
    if len(p) == 0 or r == 0:
        return p.copy()
    return _median_rows(np.concatenate([np.repeat(p[:1], r, axis=0), p, np.repeat(p[-1:], r, axis=0)]), r, len(p),
                        medians)


def _median_rows(context: np.ndarray, radius: int, count: int, medians: Sequence[int]) -> np.ndarray:
    """Rows `radius .. radius + count` of `context` `(count + 2 radius, n_classes)`, class k replaced by the
    median of the `medians[k]` rows centred on each (radius >= every median // 2): the one median filter."""
    smoothed = context[radius: radius + count].copy()
    for k, median in enumerate(medians):
        if median > 1:
            lo = radius - median // 2
            windows = np.lib.stride_tricks.sliding_window_view(context[lo: lo + count + median - 1, k], median)
            smoothed[:, k] = np.median(windows, axis=1)
    return smoothed


class EventDecoder:
    """`decode_events` on a stream: `push` blocks of frame probabilities `(n, n_classes)` in order, get back
    the events already final; `finish` gives the rest. The events are those of `decode_events` on all the
    frames at once, whatever the blocks (tested), so a long recording is decoded chunk by chunk in memory
    that does not grow with its duration: the decoder keeps the last `max(median_frames) - 1` frames, and
    per class at most one open run and one run waiting to see whether the next one starts within
    `min_gap`. An event spanning a block joint comes out once. Events come out sorted by onset (then
    class order).

    Scores: the mean of the unfiltered probabilities over the event's frames, from running sums."""

    def __init__(self, frame_seconds: float, classes: Sequence[str], post: PostProcessing, start_seconds: float = 0.0):
        if not (_number(frame_seconds) and frame_seconds > 0):
            raise ValueError(f"frame_seconds={frame_seconds!r}: must be a positive number of seconds")
        problem = post.problem(len(classes))
        if problem:
            raise ValueError(problem)
        self.h, self.classes, self.post, self.start = float(frame_seconds), list(classes), post, float(start_seconds)
        self.medians = [int(m) for m in post.medians(len(classes))]
        self.thresholds = np.asarray(post.thresholds, dtype=np.float64)
        self.radius = max(self.medians) // 2
        self.context: np.ndarray | None = None  # raw frames [done - radius, received), edge-padded at the start
        self.done = 0  # frames decided (filtered and thresholded)
        self.sums = np.zeros(len(classes))  # running sum of the raw probabilities of frames < done
        self.open: list = [None] * len(classes)     # (first, sum before first) of a run still active
        self.pending: list = [None] * len(classes)  # [first, stop, sum before first, sum before stop]
        self.ready: list[Detection] = []

    def push(self, probabilities: np.ndarray) -> list[Detection]:
        """Decode the next `(n, n_classes)` frames; the events final so far, not returned before."""
        block = np.asarray(probabilities, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != len(self.classes):
            raise ValueError(f"probabilities {list(block.shape)}: expected (frames, {len(self.classes)})")
        if len(block) == 0:
            return []
        if self.context is None:  # the first frame repeated before the start ("nearest" edges)
            self.context = np.repeat(block[:1], self.radius, axis=0)
        self.context = np.concatenate([self.context, block])
        self._decide(len(self.context) - 2 * self.radius)
        return self._release(final=False)

    def finish(self) -> list[Detection]:
        """Decode the frames still held (the last frame repeated after the end); every remaining event."""
        if self.context is not None:
            self.context = np.concatenate([self.context, np.repeat(self.context[-1:], self.radius, axis=0)])
            self._decide(len(self.context) - 2 * self.radius)
            for k in range(len(self.classes)):
                if self.open[k] is not None:
                    first, before = self.open[k]
                    self._close(k, first, before, self.done, self.sums[k])
                if self.pending[k] is not None:
                    self._emit(k, *self.pending[k])
                    self.pending[k] = None
            self.context = None
        return self._release(final=True)

    def _decide(self, count: int) -> None:
        """Filter, threshold and follow the runs of the next `count` frames (those with full context)."""
        if count <= 0:
            return
        r, context = self.radius, self.context
        raw = context[r: r + count]
        active = _median_rows(context, r, count, self.medians) >= self.thresholds
        sums = self.sums + np.concatenate([np.zeros((1, raw.shape[1])), np.cumsum(raw, axis=0)])  # before each frame
        for k in range(len(self.classes)):
            if self.open[k] is not None and not active[0, k]:  # the run ended with the previous block
                self._close(k, *self.open[k], self.done, sums[0, k])
            for first, stop in active_runs(active[:, k]):
                if self.open[k] is None:  # else the first run goes on from the previous block
                    self._start(k, self.done + first, sums[first, k])
                if stop < count:
                    self._close(k, *self.open[k], self.done + stop, sums[stop, k])
        self.done += count
        self.sums = sums[-1]
        self.context = context[count:]
        for k in range(len(self.classes)):  # a waiting run no later run can join any more
            if self.open[k] is None and self.pending[k] is not None \
                    and (self.done - self.pending[k][1]) * self.h >= self.post.min_gap:
                self._emit(k, *self.pending[k])
                self.pending[k] = None

    def _start(self, k: int, first: int, before: float) -> None:
        waiting = self.pending[k]
        if waiting is not None and (first - waiting[1]) * self.h < self.post.min_gap:  # joins the waiting run
            self.open[k] = (waiting[0], waiting[2])
        else:
            if waiting is not None:
                self._emit(k, *waiting)
            self.open[k] = (first, before)
        self.pending[k] = None

    def _close(self, k: int, first: int, before: float, stop: int, before_stop: float) -> None:
        self.open[k] = None
        self.pending[k] = [first, stop, before, before_stop]

    def _emit(self, k: int, first: int, stop: int, before: float, before_stop: float) -> None:
        if (stop - first) * self.h < self.post.min_duration:
            return
        self.ready.append(Detection(self.start + first * self.h, self.start + stop * self.h, self.classes[k],
                                    float((before_stop - before) / (stop - first))))

    def _release(self, final: bool) -> list[Detection]:
        """The ready events that no later event can precede, sorted by onset (then class order)."""
        order = {name: index for index, name in enumerate(self.classes)}
        self.ready.sort(key=lambda d: (d.onset, order[d.label]))
        if final:
            out, self.ready = self.ready, []
            return out
        held = [self.done] + [run[0] for run in self.open if run is not None] + \
            [run[0] for run in self.pending if run is not None]
        horizon = self.start + min(held) * self.h
        count = next((i for i, d in enumerate(self.ready) if d.onset >= horizon), len(self.ready))
        out, self.ready = self.ready[:count], self.ready[count:]
        return out


def decode_events(probabilities: np.ndarray, frame_seconds: float, classes: Sequence[str], post: PostProcessing,
                  start_seconds: float = 0.0) -> list[Detection]:
    """`probabilities` `(frames, n_classes)` in [0, 1] -> the events (module docstring), sorted by onset, then
    class order. `ValueError` (one line) for settings `post.problem` refuses or a shape that does not fit."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(f"probabilities {list(probabilities.shape)}: expected (frames, {len(classes)})")
    decoder = EventDecoder(frame_seconds, classes, post, start_seconds)
    return decoder.push(probabilities) + decoder.finish()
