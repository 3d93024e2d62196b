"""Constant-Q front-end: waveform batch -> log-magnitude CQT, with nnAudio's kernels.

The kernels are nnAudio `CQT1992v2`'s (bins geometrically spaced, f_k = fmin * 2^(k / B),
a Hann-windowed complex exponential of Q cycles per bin, L1-normalised, output scaled by
sqrt(kernel length) as librosa does), with librosa's Q (see `librosa_filter_scale`). nnAudio applies them as one strided conv1d in which
every kernel is zero-padded to the longest one (16,384 taps at 16 kHz from 32.7 Hz): a
bin of the top octave then multiplies ~16,000 zeros for ~130 useful taps. `LogCQT`
applies the same kernels octave by octave, each cropped to the support of its longest
kernel (one strided conv1d per octave): the same numbers (within float rounding), about
3x faster than nnAudio's own CQT1992v2 on FSDD-length clips on one CPU thread and 5x
faster than CQT2010v2 (benchmarks/cqt_variants.py), on CPU and GPU alike.

Zero ("constant") padding makes a clip's frames the same whether it is transformed
alone or zero-padded inside a batch, and frames far from the ends of a long clip depend
only on the `radius` samples around them (what `featurize` relies on to cut long clips
into overlapping chunks).
"""

from __future__ import annotations

import torch
from nnAudio.features import CQT1992v2
from omegaconf import DictConfig
from torch import Tensor, nn

# Bump when the front-end's output (or the store layout) changes for the same settings:
# it is part of the feature store's hash, so old stores are never reused.
# 2: octave-cropped kernels; store index without splits (splits come from the manifest).
# 3: resampling by soxr HQ instead of torchaudio's sinc (frames of every file whose rate is
#    not features.sr change; clip lengths too, soxr rounds n * sr / source_sr to nearest).
FRONTEND_VERSION = 3
FEATURE_KEYS = ("sr", "hop_length", "fmin", "n_bins", "bins_per_octave", "amin")


def librosa_filter_scale(bins_per_octave: int) -> float:
    """nnAudio's `filter_scale` that gives librosa's Q (librosa >= 0.10).

    nnAudio sets Q = filter_scale / (2^(1/B) - 1); librosa sets Q = 1 / alpha with
    alpha = (2^(2/B) - 1) / (2^(2/B) + 1), about 3 % longer kernels (narrower bands).
    """
    alpha = (2 ** (2 / bins_per_octave) - 1) / (2 ** (2 / bins_per_octave) + 1)
    return (2 ** (1 / bins_per_octave) - 1) / alpha


def n_frames(samples: int, hop_length: int) -> int:
    """Frames the front-end gives for `samples` samples (centred frames)."""
    return samples // hop_length + 1


def octave_groups(kernels: Tensor, bins_per_octave: int) -> list[tuple[int, int, int, int]]:
    """(first bin, end bin, first tap, end tap) per octave: where its kernels are non-zero.

    `kernels` is `(n_bins, width)`; taps outside [first tap, end tap) are zero for every
    bin of the octave.
    """
    groups = []
    for first in range(0, kernels.shape[0], bins_per_octave):
        end = min(first + bins_per_octave, kernels.shape[0])
        taps = torch.nonzero(kernels[first:end].abs().sum(dim=0)).flatten()
        groups.append((first, end, int(taps.min()), int(taps.max()) + 1))
    return groups


class LogCQT(nn.Module):
    """(batch, samples) float waveform -> (batch, n_bins, frames) natural-log magnitude.

    frames = samples // hop_length + 1; frame t is centred on sample t * hop_length.
    Magnitudes below `amin` are floored before the log, so silence maps to log(amin).
    `trainable=True` makes the kernels parameters (nnAudio's `trainable`); each octave
    keeps the support it started with.
    """

    def __init__(self, sr: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int,
                 amin: float = 1e-4, trainable: bool = False):
        super().__init__()
        self.hop_length, self.amin = hop_length, amin
        self.cqt = CQT1992v2(
            sr=sr, hop_length=hop_length, fmin=fmin, n_bins=n_bins, bins_per_octave=bins_per_octave,
            filter_scale=librosa_filter_scale(bins_per_octave), pad_mode="constant", output_format="Magnitude", trainable=trainable, verbose=False,
        )
        real = self.cqt.cqt_kernels_real.detach()[:, 0]
        self.width = real.shape[1]
        self.groups = octave_groups(real, bins_per_octave)
        # Samples either side of a frame's centre that can change it.
        self.radius = max(max(self.width // 2 - start, stop - self.width // 2) for _, _, start, stop in self.groups)

    @classmethod
    def from_config(cls, features: DictConfig) -> "LogCQT":
        return cls(**{key: features[key] for key in FEATURE_KEYS}, trainable=bool(features.get("trainable", False)))

    def forward(self, waveform: Tensor) -> Tensor:
        frames = n_frames(waveform.shape[1], self.hop_length)
        padded = nn.functional.pad(waveform, (self.width // 2, self.width // 2))[:, None]
        real, imag = self.cqt.cqt_kernels_real, self.cqt.cqt_kernels_imag  # (n_bins, 1, width)
        octaves = []
        for first, end, start, stop in self.groups:
            kernels = torch.cat([real[first:end, :, start:stop], imag[first:end, :, start:stop]])  # (2 * bins, 1, taps)
            span = padded[..., start: (frames - 1) * self.hop_length + stop]
            response = nn.functional.conv1d(span, kernels, stride=self.hop_length)  # (batch, 2 * bins, frames)
            bins = end - first
            octaves.append(response[:, :bins].square() + response[:, bins:].square())
        power = torch.cat(octaves, dim=1) * self.cqt.lenghts[:, None]  # librosa's scaling: |C| * sqrt(length)
        return 0.5 * torch.log(power.clamp_min(self.amin ** 2))


class CQTFrontend(nn.Module):
    """The model's front-end on the fly: (batch, samples) waveform -> (batch, 1, n_bins, frames)."""

    def __init__(self, cqt: LogCQT):
        super().__init__()
        self.cqt = cqt

    @classmethod
    def from_config(cls, features: DictConfig) -> "CQTFrontend":
        return cls(LogCQT.from_config(features))

    def forward(self, waveform: Tensor) -> Tensor:
        return self.cqt(waveform)[:, None]


def pick_device(setting: str) -> torch.device:
    """`auto` -> CUDA when there is a GPU, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
