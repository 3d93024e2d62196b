"""Constant-Q front-end: waveform batch -> log-magnitude CQT, computed octave by octave at falling rates.

The kernels are nnAudio's and librosa's (bins geometrically spaced, f_k = fmin * 2^(k / B),
a Hann-windowed complex exponential of Q cycles per bin, L1-normalised, output scaled by
sqrt(full-rate kernel length) as librosa does), with librosa's Q (see
`librosa_filter_scale`), each centred exactly on a sample (`cqt_kernels`). At the full
rate the lowest octave's kernels are thousands of taps long (8,500 at 16 kHz from
32.7 Hz). `LogCQT` instead computes the octaves below the top ones on the waveform
low-passed and halved once per octave (librosa's early downsampling; `halfband_lowpass`,
a fixed filter applied as matrix products), each with its kernels built at its own rate:
every octave's kernels are about as short as the top octave's, and a CQT costs 1.7-1.8 M
multiply-adds per audio-second at 8 and 16 kHz instead of 12.6 M
(benchmarks/cqt_variants.py: the variants side by side, with their fidelity).

Zero ("constant") padding makes a clip's frames the same whether it is transformed
alone or zero-padded inside a batch (each level is the decimation of the zero-extended
clip), and frames far from the ends of a long clip depend only on the `radius` samples
around them (what `featurize` and the predictor rely on to cut long clips into
overlapping chunks). Pure torch ops (pad, matmul, conv1d, slicing): CPU, CUDA and ONNX alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

# Bump when the front-end's output (or the store layout) changes for the same settings:
# it is part of the feature store's hash, so old stores are never reused.
# 2: octave-cropped kernels; store index without splits (splits come from the manifest).
# 3: resampling by soxr HQ instead of torchaudio's sinc (frames of every file whose rate is
#    not features.sr change; clip lengths too, soxr rounds n * sr / source_sr to nearest).
# 4: multirate CQT (octaves below the top ones on a decimated signal), kernels centred exactly.
FRONTEND_VERSION = 4
FEATURE_KEYS = ("sr", "hop_length", "fmin", "n_bins", "bins_per_octave", "amin")
# An octave is computed at half the rate of the level above when its top bin's main lobe
# lies below PASS_FRACTION of that level's rate: where the half-band filter passes.
PASS_FRACTION = 0.15
HALFBAND_TAPS = 33
BLOCK = 32  # the decimation as matrix products over blocks of 32 samples (see `block_weights`)


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


def halfband_lowpass(taps: int = HALFBAND_TAPS, attenuation_db: float = 100.0) -> Tensor:
    """(taps,) Kaiser-windowed sinc cut off at a quarter of the input rate, unit gain at DC.

    The anti-aliasing filter of each decimation by 2. With 33 taps it passes up to 0.15 of
    the input rate (ripple 2e-5) and stops from 0.35 on (-97 dB): what folds back lands
    above 0.15 of the input rate, out of the band of every octave computed after it
    (`PASS_FRACTION`). Every other tap is zero (a half-band filter).
    """
    half = (taps - 1) // 2
    n = np.arange(-half, half + 1)
    h = np.sinc(n / 2) / 2 * np.kaiser(taps, 0.1102 * (attenuation_db - 8.7))  # Kaiser's beta for that attenuation
    return torch.tensor(h / h.sum(), dtype=torch.float32)


def cqt_kernels(q: float, rate: float, freqs: np.ndarray) -> tuple[Tensor, int]:
    """(bins, 2 centre + 1) complex kernels at `rate` for `freqs` (Hz), and `centre`.

    nnAudio's and librosa's kernel (a Hann window of Q cycles times a complex exponential,
    L1-normalised), with the window centred exactly on tap `centre`: sampled at the
    integers n, |n| < D / 2, of the continuous window cos^2(pi n / D), D = Q rate / f.
    nnAudio's kernels sit half a sample off centre when their length is odd: nothing at the
    full rate, but 32 full-rate samples for an octave computed at 1/64 of it, which costs
    white noise 0.002 of correlation with librosa (benchmarks/cqt_variants.py).
    """
    lengths = q * rate / np.asarray(freqs, dtype=np.float64)  # D, in samples
    halves = np.ceil(lengths / 2).astype(int) - 1  # the largest n with |n| < D / 2
    centre = int(halves.max())
    kernels = np.zeros((len(freqs), 2 * centre + 1), dtype=np.complex128)
    for row, (freq, length, half) in enumerate(zip(freqs, lengths, halves)):
        n = np.arange(-half, half + 1)
        kernel = np.cos(np.pi * n / length) ** 2 * np.exp(2j * np.pi * freq * n / rate)
        kernels[row, centre - half: centre + half + 1] = kernel / np.abs(kernel).sum()
    return torch.from_numpy(kernels.astype(np.complex64)), centre


def block_weights(h: Tensor, block: int = BLOCK) -> Tensor:
    """(J, block, block / 2): decimation by 2 with filter `h` (taps,) as matrix products.

    y[m] = sum_k h[k] x[2m + k] for the block / 2 outputs m = (block / 2) t + r of block t:
    with x cut into rows of `block` samples, xb[t, c] = x[block t + c], the outputs of row t
    are sum_j xb[t + j] @ W[j], W[j][c, r] = h[block j + c - 2r]. A (batch x rows) by
    (block x block / 2) matrix product runs at several times the speed of a one-channel
    strided conv1d on CPU (which oneDNN runs at under 3 G multiply-adds/s, and far slower
    at some lengths).
    """
    spans = -(-(block - 2 + len(h)) // block)
    weights = torch.zeros(spans, block, block // 2)
    for j in range(spans):
        for c in range(block):
            for r in range(block // 2):
                if 0 <= block * j + c - 2 * r < len(h):
                    weights[j, c, r] = h[block * j + c - 2 * r]
    return weights


def octave_levels(sr: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int, q: float,
                  decimate: bool = True) -> list[tuple[int, int, int]]:
    """(first bin, end bin, level) per octave, lowest first; level l is the rate sr / 2^l.

    An octave goes down a level while its top bin's main lobe, f (1 + 2 / Q), stays below
    PASS_FRACTION of the rate above (so the half-band filter passes it and its aliases
    fall elsewhere) and the hop stays a whole number of samples at the lower rate.
    """
    max_level = (hop_length & -hop_length).bit_length() - 1 if decimate else 0  # factors of 2 in the hop
    octaves = []
    for first in range(0, n_bins, bins_per_octave):
        end = min(first + bins_per_octave, n_bins)
        top = fmin * 2 ** ((end - 1) / bins_per_octave) * (1 + 2 / q)
        level = 0
        while level < max_level and top <= PASS_FRACTION * sr / 2 ** level:
            level += 1
        octaves.append((first, end, level))
    return octaves


@dataclass(frozen=True)
class Octave:
    """Bins [first, end), computed at `level` with kernels `taps` long whose tap `centre`
    lies on the frame's centre sample."""

    first: int
    end: int
    level: int
    taps: int
    centre: int


class _Kernels(nn.Module):
    """Holds `cqt_kernels_real`, `cqt_kernels_imag` (n_bins, 1, width): each octave's kernels at
    its own rate in columns [0, taps); and `lenghts` (n_bins,), the full-rate kernel lengths.
    Named as in nnAudio's CQT1992v2 (the front-end before FRONTEND_VERSION 4), so the state_dict
    keys stay as they were."""

    def __init__(self, real: Tensor, imag: Tensor, lengths: Tensor, trainable: bool):
        super().__init__()
        if trainable:
            self.cqt_kernels_real, self.cqt_kernels_imag = nn.Parameter(real), nn.Parameter(imag)
        else:
            self.register_buffer("cqt_kernels_real", real)
            self.register_buffer("cqt_kernels_imag", imag)
        self.register_buffer("lenghts", lengths)


class LogCQT(nn.Module):
    """(batch, samples) float waveform -> (batch, n_bins, frames) natural-log magnitude.

    frames = samples // hop_length + 1; frame t is centred on sample t * hop_length.
    Magnitudes below `amin` are floored before the log, so silence maps to log(amin).

    Multirate: the zero-padded waveform is low-passed and halved (`halfband_lowpass`, as
    matrix products: `halve`) once per level; level l's sample j is the filtered signal at
    sample j * 2^l, so frames stay centred where they were. Each octave is one strided
    conv1d of its bins' kernels built at its level's rate (`octave_levels`,
    `cqt_kernels`). `decimate=False` computes every octave at the full rate (correlation
    >= 0.9999 with it on speech, at seven times the work). The output is scaled by
    sqrt(full-rate kernel length) as librosa does: L1-normalised kernels answer a tone
    with the same magnitude at any rate.

    `trainable=True` makes the kernels parameters (nnAudio's `trainable`); each octave
    keeps its rate and support.
    """

    def __init__(self, sr: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int,
                 amin: float = 1e-4, trainable: bool = False, decimate: bool = True):
        super().__init__()
        self.hop_length, self.amin = hop_length, amin
        q = librosa_filter_scale(bins_per_octave) / (2 ** (1 / bins_per_octave) - 1)  # nnAudio's Q
        freqs = fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)
        self.octaves, parts = [], []
        for first, end, level in octave_levels(sr, hop_length, fmin, n_bins, bins_per_octave, q, decimate):
            kernels, centre = cqt_kernels(q, sr / 2 ** level, freqs[first:end])
            parts.append(kernels)
            self.octaves.append(Octave(first, end, level, kernels.shape[1], centre))
        packed = torch.zeros(n_bins, 1, max(o.taps for o in self.octaves), dtype=torch.complex64)
        for octave, part in zip(self.octaves, parts):
            packed[octave.first:octave.end, 0, :octave.taps] = part
        lengths = torch.tensor(np.ceil(q * sr / freqs)).float()  # full-rate lengths (nnAudio's, librosa's)
        self.cqt = _Kernels(packed.real.contiguous(), packed.imag.contiguous(), lengths, trainable)
        self.register_buffer("lowpass", halfband_lowpass(), persistent=False)  # (taps,)
        self.register_buffer("blocks", block_weights(self.lowpass), persistent=False)  # (J, BLOCK, BLOCK / 2)
        self._layout()

    def _layout(self) -> None:
        """Each level's padding, where its samples sit in its array, and the radius.

        Level l's array holds sample j (of the signal at sr / 2^l) at index j + offset[l].
        Each level is the decimation of the zero-extended clip, computed only where it is
        not zero: level l is zero at samples below -K and beyond N / 2^l + K (K the
        filter's half length, N the clip's samples), so each level is computed a little
        past those ends and zero-padded as its kernels need. `room[l]` is a lower bound of
        the samples the array holds past N / 2^l: it must reach the kernels' right half,
        and, when a level follows, leave room for all its non-zero samples.
        """
        half, top = (len(self.lowpass) - 1) // 2, max(o.level for o in self.octaves)
        spans, block = self.blocks.shape[0], self.blocks.shape[1]
        self.levels = top
        left = [max([o.centre for o in self.octaves if o.level == level], default=0) for level in range(top + 1)]
        right = [max([o.taps - o.centre for o in self.octaves if o.level == level], default=0)
                 for level in range(top + 1)]
        # Before a decimation: 3K samples of left context (the output then starts at least K
        # before sample 0), and offset - K even (the filter's centre lands on even samples).
        self.offset, self.shift, self.pad = [], [], []
        room = 0.0
        for level in range(top + 1):
            below = level < top
            got = 0 if level == 0 else (self.offset[-1] - half) // 2  # offset of the decimated array
            offset = max(left[level], 3 * half if below else 0, got)
            self.offset.append(offset + ((offset - half) % 2 if below else 0))
            self.shift.append(self.offset[-1] - got)  # zeros to prepend
            need = max(right[level], half + block * spans - 1 if below else 0)
            guaranteed = 0.0 if level == 0 else (room + 1 + half) / 2 - block * spans / 2
            self.pad.append(max(0, math.ceil(need - guaranteed)))  # zeros to append
            room = guaranteed + self.pad[-1]
        # Samples either side of a frame's centre that can change it (chunk margins).
        self.radius = max(max(o.centre, o.taps - o.centre) * 2 ** o.level + half * (2 ** o.level - 1)
                          for o in self.octaves)

    @classmethod
    def from_config(cls, features: Mapping) -> "LogCQT":
        """From front-end settings: a model file's `features` mapping, or the `features` config group."""
        return cls(**{key: features[key] for key in FEATURE_KEYS}, trainable=bool(features.get("trainable", False)))

    def halve(self, signal: Tensor) -> Tensor:
        """(batch, n) -> (batch, m): low-pass and keep every other sample; output m is centred on
        input 2m + K. m = BLOCK / 2 * (n // BLOCK - J + 1): the last samples of `signal` only feed
        outputs when a whole block of them is there."""
        spans, block = self.blocks.shape[0], self.blocks.shape[1]
        rows = signal.shape[1] // block
        x = signal[:, : rows * block].reshape(signal.shape[0], rows, block)  # (batch, rows, block)
        out = x[:, : rows - spans + 1] @ self.blocks[0]
        for j in range(1, spans):
            out = out + x[:, j: rows - spans + 1 + j] @ self.blocks[j]
        return out.reshape(signal.shape[0], -1)  # (batch, rows * block / 2)

    def signals(self, waveform: Tensor) -> list[Tensor]:
        """(batch, samples) -> the padded signal of each level, (batch, n_l), level l at sr / 2^l."""
        signal = nn.functional.pad(waveform, (self.offset[0], self.pad[0]))
        out = [signal]
        for level in range(1, self.levels + 1):
            signal = nn.functional.pad(self.halve(signal), (self.shift[level], self.pad[level]))
            out.append(signal)
        return out

    def multiply_adds(self, samples: int) -> int:
        """Multiply-adds of one clip of `samples` samples: kernels and decimations (as computed,
        the block products' zero weights included)."""
        frames, total = n_frames(samples, self.hop_length), 0
        length = samples + self.offset[0] + self.pad[0]
        spans, block = self.blocks.shape[0], self.blocks.shape[1]
        for level in range(self.levels + 1):
            if level:
                rows = length // block - spans + 1
                total += rows * spans * block * block // 2
                length = rows * block // 2 + self.shift[level] + self.pad[level]
            total += sum(frames * 2 * (o.end - o.first) * o.taps for o in self.octaves if o.level == level)
        return total

    def forward(self, waveform: Tensor) -> Tensor:
        frames = n_frames(waveform.shape[1], self.hop_length)
        real, imag = self.cqt.cqt_kernels_real, self.cqt.cqt_kernels_imag  # (n_bins, 1, width)
        octaves = {}
        for level, signal in enumerate(self.signals(waveform)):
            hop = self.hop_length >> level
            for o in (o for o in self.octaves if o.level == level):
                kernels = torch.cat([real[o.first:o.end, :, :o.taps],
                                     imag[o.first:o.end, :, :o.taps]])  # (2 bins, 1, taps)
                begin = self.offset[level] - o.centre
                span = signal[:, None, begin: begin + (frames - 1) * hop + o.taps]
                response = nn.functional.conv1d(span, kernels, stride=hop)  # (batch, 2 bins, frames)
                bins = o.end - o.first
                octaves[o.first] = response[:, :bins].square() + response[:, bins:].square()
        power = torch.cat([octaves[first] for first in sorted(octaves)], dim=1) * self.cqt.lenghts[:, None]
        return 0.5 * torch.log(power.clamp_min(self.amin ** 2))  # librosa's scaling: |C| * sqrt(length)


class CQTFrontend(nn.Module):
    """The model's front-end on the fly: (batch, samples) waveform -> (batch, 1, n_bins, frames)."""

    def __init__(self, cqt: LogCQT):
        super().__init__()
        self.cqt = cqt

    @classmethod
    def from_config(cls, features: Mapping) -> "CQTFrontend":
        return cls(LogCQT.from_config(features))

    def forward(self, waveform: Tensor) -> Tensor:
        return self.cqt(waveform)[:, None]


def pick_device(setting: str) -> torch.device:
    """`auto` -> CUDA when there is a GPU, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
