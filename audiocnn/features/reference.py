"""The reference the front-end is checked against: `librosa.cqt`, and the comparison measures.

Used by tests/test_cqt_fidelity.py and benchmarks/cqt_variants.py. librosa is the
reference only; the pipeline never calls it.
"""

from __future__ import annotations

import math

import numpy as np


def librosa_log_cqt(wave: np.ndarray, sr: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int,
                    amin: float) -> np.ndarray:
    """(samples,) -> (n_bins, frames) natural-log magnitude of `librosa.cqt`, normalised as ours.

    Both use L1-normalised Hann-windowed kernels with the same Q scaled by sqrt(kernel
    length) (librosa's `scale=True`), centred frames and zero padding, so magnitudes
    agree directly; the same floor `amin` is applied before the log. `sparsity=0`: the
    exact filter basis (librosa's default 0.01 drops its smallest coefficients, an
    approximation of its own that alone costs ~0.03 of correlation on pure tones).
    """
    import librosa

    magnitude = np.abs(librosa.cqt(np.asarray(wave, dtype=np.float32), sr=sr, hop_length=hop_length, fmin=fmin,
                                   n_bins=n_bins, bins_per_octave=bins_per_octave, pad_mode="constant",
                                   sparsity=0.0))
    return np.log(np.maximum(magnitude, amin))


def inside_cells(samples: int, hop_length: int, kernel_lengths: np.ndarray) -> np.ndarray:
    """(n_bins, frames) mask: cells whose kernel lies wholly inside the clip.

    Elsewhere a kernel overlaps the zero padding past an end of the clip, where librosa
    (which computes each lower octave on a resampled signal) and a full-rate
    convolution legitimately differ: the *edges*, which for the lowest octaves of a
    short clip are all of it.
    """
    centres = np.arange(samples // hop_length + 1) * hop_length
    half = np.ceil(np.asarray(kernel_lengths, dtype=float) / 2)[:, None]
    return (centres[None] - half >= 0) & (centres[None] + half <= samples)


def log_correlation(ours: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
                    top_db: float | None = 80.0) -> float:
    """Pearson correlation of two log-magnitude spectrograms over the cells in `mask` (default all).

    Both are floored `top_db` below the louder one's peak first (librosa's
    `amplitude_to_db(..., top_db=80)` convention): 100 dB below a tone's peak, cells hold
    only rounding and resampler stop-band residue, which says nothing about the transform.
    """
    if top_db is not None:
        floor = max(ours.max(), reference.max()) - top_db / 20 * math.log(10)
        ours, reference = np.maximum(ours, floor), np.maximum(reference, floor)
    if mask is not None:
        ours, reference = ours[mask], reference[mask]
    return float(np.corrcoef(ours.ravel(), reference.ravel())[0, 1])


def peak_bin(log_spectrum: np.ndarray, margin: int) -> int:
    """Bin of the largest mean magnitude over the frames at least `margin` frames from either end."""
    return int(np.exp(log_spectrum[:, margin:-margin]).mean(axis=1).argmax())


def bin_frequency(k: int, fmin: float, bins_per_octave: int) -> float:
    return fmin * 2 ** (k / bins_per_octave)


def tone(freq: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def log_sweep(f0: float, f1: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """Exponential sine sweep from f0 to f1 Hz: equal time per octave, like the CQT's bins."""
    t = np.arange(int(sr * seconds)) / sr
    rate = math.log(f1 / f0) / seconds
    return (amplitude * np.sin(2 * math.pi * f0 * (np.exp(rate * t) - 1) / rate)).astype(np.float32)


def white_noise(sr: int, seconds: float, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(int(sr * seconds))).astype(np.float32)
