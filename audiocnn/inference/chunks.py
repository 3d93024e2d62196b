"""The windows a recording is scored by, and the chunks of waveform that hold them (numpy only:
the onnxruntime path imports no torch).

A recording of `samples` samples (at `features.sr`) has `frame_count(samples, hop_length)` frames,
frame t centred on sample t * hop_length (the front-end's centred frames). It is scored by the
sliding windows of `window` frames of `features.sliding.window_starts` (evaluate's grid): every `hop`
frames (default: half a window), plus one window ending on the last frame. Both eager scoring
(`Predictor`) and the exported graph's callers use these chunks.

A *chunk* is a run of consecutive windows, scored in one call of `inference.graph.ChunkScorer`:
frames [f0, f1) with f0 its first window's start and f1 = min(its last start + window, frames),
cut from samples [f0 * hop_length - margin, f1 * hop_length + margin), zeros outside the
recording, `margin` (`features.plan.chunk_margin`) at least the front-end's radius. The frames
the graph computes from it then equal the whole recording's frames [f0, f1) (the contract of
`features.plan`), so chunks join exactly: the windows of all chunks are those of the whole
recording. A chunk spans at most `max_frames` frames (or one window) and holds at most
`max_windows` windows, so memory per call is bounded whatever the duration and the hop.

What either backend (a bundle's `Predictor`, an exported file) answers for one recording is a
`Scored`: the vote over its chunks' windows, and those windows when asked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np

from audiocnn.features import sliding


def frame_count(samples: int, hop_length: int) -> int:
    """Frames the front-end gives for `samples` samples (`features.cqt.n_frames`)."""
    return samples // hop_length + 1


@dataclass(frozen=True)
class Chunk:
    start: int  # first sample, f0 * hop_length - margin (< 0: zeros)
    stop: int  # end sample, f1 * hop_length + margin (beyond the recording: zeros)
    first: int  # f0: the recording's frame that is the chunk's frame 0
    starts: np.ndarray  # (n_windows,) int64: window start frames, relative to `first`


def chunk_limits(features: Mapping, margin: int) -> tuple[int, int]:
    """(frames a chunk spans at most, samples of the longest chunk) for a model's feature settings and chunk
    `margin`: `features.chunk_seconds` of frames (at least one window), with the margins."""
    sr, hop_length, window = int(features["sr"]), int(features["hop_length"]), int(features["window_frames"])
    max_frames = max(1, int(float(features.get("chunk_seconds", 60)) * sr) // hop_length)
    return max_frames, max(max_frames, window) * hop_length + 2 * margin


def chunks(samples: int, hop_length: int, window: int, margin: int, hop: int | None = None,
           max_frames: int = 1875, max_windows: int = 64, starts: Iterable[int] | None = None) -> Iterator[Chunk]:
    """The chunks covering every window of a recording of `samples` samples, in order: the windows of
    `features.sliding.window_starts`, or the increasing start frames `starts` (an events model's grid)."""
    total = frame_count(samples, hop_length)
    span = max(max_frames, window)
    group: list[int] = []
    for start in itertools.chain(sliding.window_starts(total, window, hop) if starts is None else starts, [None]):
        if group and (start is None or len(group) == max_windows or start + window - group[0] > span):
            f0, f1 = group[0], min(group[-1] + window, total)
            yield Chunk(f0 * hop_length - margin, f1 * hop_length + margin, f0,
                        np.asarray(group, dtype=np.int64) - f0)
            group = []
        if start is not None:
            group.append(start)


def cut(wave: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of `wave` `(samples,)`, zeros outside it: `(stop - start,)` float32."""
    out = np.zeros(stop - start, np.float32)
    lo, hi = max(start, 0), min(stop, len(wave))
    if hi > lo:
        out[lo - start: hi - start] = wave[lo:hi]
    return out


@dataclass
class Scored:
    """One input's answer: `probabilities` `(n_classes,)` (None if it could not be read, see `error`)."""

    name: str
    duration: float = 0.0
    probabilities: np.ndarray | None = None
    windows: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (start frame, probabilities)
    error: str = ""
