"""The order in which featurize computes clips: buckets of similar length, long clips in chunks.

A *piece* is one waveform the front-end transforms: a whole clip, or one chunk of a clip
longer than `features.chunk_seconds`. Pieces are sorted by length so a batch pads
little; a long clip's chunks stay together, in order, so its frames land back to back
in one shard. The plan is a pure function of the manifest and the settings, which is
what lets a killed run skip exactly the clips its finished shards hold, and lets the
ranks of a `torchrun` split it without talking to each other.

A chunk covering frames [f0, f1) is cut from samples [f0 * hop - margin, f1 * hop + margin)
(zeros beyond the clip, like the front-end's own padding), with `margin` >= the
front-end's radius; its frames [margin / hop, margin / hop + f1 - f0) then equal the
frames of the whole clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audiocnn.features.cqt import n_frames


@dataclass(frozen=True)
class Piece:
    position: int  # row of the manifest
    start: int  # first sample (may be < 0: zeros); whole clips: 0
    stop: int  # end sample; whole clips: -1 (to the end, however long it decodes)
    skip: int  # leading frames to drop
    keep: int  # frames to keep; whole clips: -1 (all)
    last: bool  # the clip's last piece
    samples: int  # length of the waveform (whole clips: expected from the manifest's duration)

    @property
    def whole(self) -> bool:
        return self.stop < 0


def chunk_margin(radius: int, hop_length: int) -> int:
    """Samples of context each side of a chunk: the front-end's radius rounded up to whole hops."""
    return math.ceil(radius / hop_length) * hop_length


def clip_pieces(position: int, samples: int, chunk_frames: int, hop_length: int, margin: int) -> list[Piece]:
    """The pieces of one clip of `samples` samples (at the front-end's rate)."""
    total = n_frames(samples, hop_length)
    if total <= chunk_frames:
        return [Piece(position, 0, -1, 0, -1, True, samples)]
    pieces = []
    for f0 in range(0, total, chunk_frames):
        f1 = min(f0 + chunk_frames, total)
        start, stop = f0 * hop_length - margin, f1 * hop_length + margin
        pieces.append(Piece(position, start, stop, margin // hop_length, f1 - f0, f1 == total, stop - start))
    return pieces


def plan_pieces(manifest: pd.DataFrame, sr: int, hop_length: int, chunk_seconds: float, margin: int,
                samples_of=None) -> list[Piece]:
    """Every manifest clip as pieces, shortest clips first, long clips chunked.

    `manifest` needs `duration` (seconds); `samples_of(position)` gives a long clip's
    exact length (its header), since a chunk plan must know where the clip ends, or None.
    """
    chunk_frames = max(1, int(chunk_seconds * sr) // hop_length)
    expected = np.round(manifest["duration"].to_numpy(dtype=float) * sr).astype(np.int64)
    order = np.argsort(expected, kind="stable")
    pieces: list[Piece] = []
    for position in order.tolist():
        long = samples_of is not None and n_frames(int(expected[position]), hop_length) > chunk_frames
        samples = samples_of(position) if long else None  # None: unreadable header, decoded (and reported) whole
        if samples is None:
            pieces.append(Piece(position, 0, -1, 0, -1, True, int(expected[position])))
        else:
            pieces.extend(clip_pieces(position, samples, chunk_frames, hop_length, margin))
    return pieces


def rank_share(pieces: list[Piece], rank: int, world: int) -> list[Piece]:
    """The pieces of every `world`-th clip in plan order, starting with clip `rank` (lengths stay balanced)."""
    if world == 1:
        return pieces
    clips: dict[int, int] = {}
    for piece in pieces:
        clips.setdefault(piece.position, len(clips))
    return [piece for piece in pieces if clips[piece.position] % world == rank]


def batches(pieces: list[Piece], batch_size: int, max_samples: int) -> list[list[int]]:
    """Consecutive pieces (indices into `pieces`) in groups of at most `batch_size`, and
    of at most `max_samples` once padded to their longest: memory per batch is bounded
    whatever the clips' lengths (a batch holds at least one piece)."""
    groups, group, longest = [], [], 0
    for number, piece in enumerate(pieces):
        longest_with = max(longest, piece.samples)
        if group and (len(group) == batch_size or longest_with * (len(group) + 1) > max_samples):
            groups.append(group)
            group, longest_with = [], piece.samples
        group.append(number)
        longest = longest_with
    if group:
        groups.append(group)
    return groups
