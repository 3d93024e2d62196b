"""The train split's per-bin statistics for `model.norm.type=bin_norm` (`models.norm.BinNorm`).

Computed once, before fitting, from the TRAIN split only (validation and test clips never
enter), and put into the model's `BinNorm` buffers, so that they travel in `model.pt`, the
export and serving:
- from the feature store: every frame of every training clip, read clip by clip from the
  memory-mapped shards and merged chunk by chunk (Chan et al.'s parallel update of mean and
  sum of squared deviations, in float64), so memory does not grow with the dataset;
- on the fly (`features.on_the_fly=true`): the front-end's frames of each training clip's
  centred window, the CQT with the kernels it starts with (trained kernels move later).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from audiocnn.features.cqt import CQTFrontend, pick_device
from audiocnn.models.norm import BinNorm
from audiocnn.training.windows import HALF_TO_FLOAT

CHUNK_FRAMES = 1 << 16  # frames merged at a time: 65,536 x n_bins float64 (44 MB at 84 bins)


class BinMoments:
    """Running count, mean and sum of squared deviations per bin over `(frames, n_bins)` chunks."""

    def __init__(self, n_bins: int):
        self.count = 0
        self.mean = np.zeros(n_bins)
        self.m2 = np.zeros(n_bins)

    def add(self, frames: np.ndarray) -> None:
        """Merge `(frames, n_bins)` values (any float dtype) into the running moments."""
        if len(frames) == 0:
            return
        chunk = np.asarray(frames, dtype=np.float64)
        n, mean = len(chunk), chunk.mean(axis=0)
        m2 = np.square(chunk - mean).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * n / total)
        self.count = total

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, population std) per bin: numpy's `mean(axis=0)`, `std(axis=0)` over all frames added."""
        if self.count == 0:
            raise ValueError("no training frames to compute bin statistics from")
        return self.mean, np.sqrt(self.m2 / self.count)


def store_moments(store, rows: np.ndarray) -> BinMoments:
    """Moments over every frame of the store's index rows `rows` (float16 frames, as the model sees them)."""
    moments, pending, size = BinMoments(store.n_bins), [], 0
    for row in np.asarray(rows).tolist():
        frames = np.take(HALF_TO_FLOAT, np.asarray(store.frames(row)).view(np.uint16))  # (length, n_bins)
        pending.append(frames)
        size += len(frames)
        if size >= CHUNK_FRAMES:
            moments.add(np.concatenate(pending))
            pending, size = [], 0
    if pending:
        moments.add(np.concatenate(pending))
    return moments


@torch.no_grad()
def window_moments(data) -> BinMoments:
    """Moments over the CQT frames of each training clip's centred window (on-the-fly training)."""
    features = data.features
    device = pick_device(features.device)
    frontend = CQTFrontend.from_config(features.model_dump()).to(device).eval()
    dataset = data.dataset("train", "center")
    moments = BinMoments(features.n_bins)
    batch = features.batch_size
    for first in range(0, len(dataset), batch):
        waves = dataset.batch(np.arange(first, min(first + batch, len(dataset))))  # (batch, samples)
        frames = frontend(waves.to(device)).to(torch.float16).float()  # (batch, 1, n_bins, window), store-rounded
        moments.add(frames[:, 0].transpose(1, 2).reshape(-1, frames.shape[2]).cpu().numpy())
    return moments


def fit_bin_norm(model: nn.Module, data) -> BinMoments | None:
    """Give every `BinNorm` of `model` the train split's per-bin mean and std (`data`: the run's
    `WindowDataModule`); None when it has none."""
    layers = [m for m in model.modules() if isinstance(m, BinNorm)]
    if not layers:
        return None
    train = data.rows("train")
    moments = window_moments(data) if data.on_the_fly else store_moments(data.store, train)
    mean, std = (torch.from_numpy(v).float() for v in moments.mean_std())
    for layer in layers:
        layer.set_statistics(mean.to(layer.mean.device), std.to(layer.std.device))
    print(f"train: model.norm.type=bin_norm: per-bin mean and std of {moments.count} frames of the "
          f"{len(train)} train clips")
    return moments
