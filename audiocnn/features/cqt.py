"""Constant-Q front-end: waveform batch -> log-magnitude CQT, with nnAudio.

nnAudio's `CQT1992v2` computes the CQT as one strided conv1d with precomputed complex
kernels (bins geometrically spaced, f_k = fmin * 2^(k / bins_per_octave)), so a batch
runs as a single op on CPU or GPU. Zero ("constant") padding makes a clip's frames the
same whether it is transformed alone or zero-padded inside a batch.
"""

from __future__ import annotations

import torch
from nnAudio.features import CQT1992v2
from omegaconf import DictConfig
from torch import Tensor, nn

# Bump when the front-end's output changes for the same settings: it is part of the
# feature store's hash, so old stores are never reused.
FRONTEND_VERSION = 1
FEATURE_KEYS = ("sr", "hop_length", "fmin", "n_bins", "bins_per_octave", "amin")


def n_frames(samples: int, hop_length: int) -> int:
    """Frames the front-end gives for `samples` samples (centred frames)."""
    return samples // hop_length + 1


class LogCQT(nn.Module):
    """(batch, samples) float waveform -> (batch, n_bins, frames) natural-log magnitude.

    frames = samples // hop_length + 1. Magnitudes below `amin` are floored before the log,
    so silence maps to log(amin).
    """

    def __init__(self, sr: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int,
                 amin: float = 1e-4, trainable: bool = False):
        super().__init__()
        self.amin = amin
        self.cqt = CQT1992v2(
            sr=sr, hop_length=hop_length, fmin=fmin, n_bins=n_bins, bins_per_octave=bins_per_octave,
            pad_mode="constant", output_format="Magnitude", trainable=trainable, verbose=False,
        )

    @classmethod
    def from_config(cls, features: DictConfig) -> "LogCQT":
        return cls(**{key: features[key] for key in FEATURE_KEYS})

    def forward(self, waveform: Tensor) -> Tensor:
        return torch.log(self.cqt(waveform).clamp_min(self.amin))


def pick_device(setting: str) -> torch.device:
    """`auto` -> CUDA when there is a GPU, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
