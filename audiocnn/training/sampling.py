"""`trainer.sampler`: the order of the training clips each epoch.

`shuffle` (default): every clip once per epoch, in a new order. `balanced`: as many draws as
clips, with replacement, each clip drawn with probability proportional to the rarest of its
labels' inverse train frequency, so that rare labels are seen about as often as common ones
(single-label: every class equally often; multi-label: a clip with a rare label is drawn for it).
Under DDP every process draws the same sequence (seed and epoch) and takes every `world`-th draw.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

SAMPLERS = ("shuffle", "balanced")


def rare_label_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each clip's draw weight `(clips,)`: max over its labels of 1 / (train clips with that label).

    `labels`: class indices `(clips,)`, or multi-label 0/1 targets `(clips, n_classes)`; a clip with
    no label (all-zero targets) gets the smallest weight any clip has."""
    labels = np.asarray(labels)
    targets = labels > 0 if labels.ndim == 2 else np.eye(n_classes, dtype=bool)[labels.astype(int)]
    inverse = 1.0 / np.maximum(targets.sum(axis=0), 1)  # (n_classes,)
    weights = np.where(targets, inverse, 0.0).max(axis=1)
    return np.where(weights > 0, weights, weights[weights > 0].min() if (weights > 0).any() else 1.0)


class BalancedSampler(Sampler[int]):
    """`len(weights) // world` draws per epoch for process `rank` of `world`, by `weights` with replacement,
    from a generator seeded by (`seed`, epoch): Lightning's `set_epoch` gives each epoch its own draw,
    and a resumed training the draws the uninterrupted one would have made."""

    def __init__(self, weights: np.ndarray, rank: int = 0, world: int = 1, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        draws = torch.multinomial(self.weights, len(self) * self.world, replacement=True, generator=generator)
        return iter(draws[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return len(self.weights) // self.world
