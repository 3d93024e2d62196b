"""Frequency poolings: a conv feature map to one feature vector per time step, for the CRNN's RNN.

Every pooling maps `(B, C, F, T) -> (B, T, D)`; `FREQ_POOLS` names them, `freq_pool_width(name,
C, F)` gives D, `build_freq_pool(name, C, F)` builds one. On a CQT a transposition is a shift along
F; how a pooling treats that shift decides whether absolute pitch height is a feature:

* `flatten`   D = C * F. Every (channel, bin) is its own feature: absolute pitch height is kept
              (the CRNN's original behaviour, and the default).
* `max`       D = C. Per channel the max over F: invariant to a shift of the content along F
              (as long as it stays inside the map), and blind to where the content is.
* `attention` D = C. Per channel a softmax-weighted mean over F, the weights (summing to 1 over F)
              computed from the features at each bin by a 1x1 conv: content-driven, so shifting
              the content shifts the weights with it and the output does not change.
* `max_centroid`  D = 2 C. Per channel the max over F, plus where along F the channel's activity
              lies (its centroid in bins, divided by F) *relative to the clip's mean centroid*.
              A shift of the whole clip moves every centroid and the mean alike, so the output is
              unchanged; a note moving up or down within the clip moves the centroid against the
              mean, so rising and falling patterns stay apart.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FREQ_POOLS = ("flatten", "max", "attention", "max_centroid")
EPS = 1e-6


def freq_pool_width(name: str, channels: int, bins: int) -> int:
    """D, the width of each time step's vector after pooling `name` over `bins` frequency bins."""
    return {"flatten": channels * bins, "max_centroid": 2 * channels}.get(name, channels)


class FlattenPool(nn.Module):
    """(B, C, F, T) -> (B, T, C * F): channels x bins flattened, absolute pitch height kept."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1, 2).transpose(1, 2)


class MaxPool(nn.Module):
    """(B, C, F, T) -> (B, T, C): the max over frequency of each channel."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=2).transpose(1, 2)


class AttentionPool(nn.Module):
    """(B, C, F, T) -> (B, T, C): per channel, a weighted mean over F; weights from a 1x1 conv, softmax over F."""

    def __init__(self, channels: int):
        super().__init__()
        self.score = nn.Conv2d(channels, channels, kernel_size=1)

    def weights(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C, F, T) non-negative weights summing to 1 over F."""
        return self.score(x).softmax(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        return (self.weights(x) * x).sum(dim=2).transpose(1, 2)


class MaxCentroidPool(nn.Module):
    """(B, C, F, T) -> (B, T, 2C): per channel the max over F, then the centroid relative to the clip's mean.

    The centroid of channel c at frame t weighs bin f by x[c, f, t] - min_f x[c, :, t] (so a level
    shared by every bin, a floor or a bias, carries no position), in units of F. The clip's mean is
    the frames' centroids weighed by each frame's activity; frames without activity (flat over F)
    give 0.
    """

    def forward(self, x: Tensor) -> Tensor:
        bins = x.shape[2]
        mass = x - x.amin(dim=2, keepdim=True)  # (B, C, F, T) >= 0
        per_frame = mass.sum(dim=2)  # (B, C, T)
        position = torch.arange(bins, dtype=x.dtype, device=x.device).view(1, 1, bins, 1) / bins
        centroid = (mass * position).sum(dim=2) / (per_frame + EPS)  # (B, C, T)
        mean = (centroid * per_frame).sum(dim=2, keepdim=True) / (per_frame.sum(dim=2, keepdim=True) + EPS)
        active = per_frame / (per_frame + EPS)  # ~1 where the frame has activity, 0 where flat
        relative = (centroid - mean) * active  # (B, C, T)
        return torch.cat([x.amax(dim=2), relative], dim=1).transpose(1, 2)


def build_freq_pool(name: str, channels: int, bins: int) -> nn.Module:
    """The pooling `name` (one of `FREQ_POOLS`) for a `(B, channels, bins, T)` map."""
    if name == "attention":
        return AttentionPool(channels)
    return {"flatten": FlattenPool, "max": MaxPool, "max_centroid": MaxCentroidPool}[name]()
