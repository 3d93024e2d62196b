"""The reference the front-end is checked against: `librosa.cqt`, and the comparison measures.

Used by tests/test_cqt_fidelity.py and benchmarks/cqt_variants.py. librosa is the
reference only; the pipeline never calls it.
"""

from __future__ import annotations

import functools
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

    librosa refuses a top bin whose band crosses Nyquist (the speech front-end's 3.95 kHz
    at 8 kHz): the reference is then librosa's CQT of the same clip at twice the rate
    (`upsample2`), at twice the hop (the same frame times), less 0.5 ln 2 (its sqrt(length)
    scale counts samples at twice the rate).
    """
    import librosa

    wave, factor = np.asarray(wave, dtype=np.float32), 1
    if _band_top(sr, fmin, n_bins, bins_per_octave) > sr / 2:
        wave, factor = upsample2(wave), 2
    magnitude = np.abs(librosa.cqt(wave, sr=sr * factor, hop_length=hop_length * factor, fmin=fmin, n_bins=n_bins,
                                   bins_per_octave=bins_per_octave, pad_mode="constant", sparsity=0.0))
    return np.log(np.maximum(magnitude / math.sqrt(factor), amin))


def upsample2(wave: np.ndarray) -> np.ndarray:
    """(n,) -> (2n,) the band-limited interpolation of the zero-extended clip at twice the rate.

    By FFT with the clip zero-padded by its own length each side (so the periodic wrap adds
    nothing measurable), not a resampler: resamplers' filters attenuate the band just below
    Nyquist, where the speech front-end's top bins are.
    """
    n = len(wave)
    spectrum = np.fft.rfft(np.pad(np.asarray(wave, dtype=np.float64), (n, n)))
    return (2 * np.fft.irfft(spectrum, 6 * n)[2 * n: 4 * n]).astype(np.float32)


def _band_top(sr: int, fmin: float, n_bins: int, bins_per_octave: int) -> float:
    """The highest frequency of librosa's top kernel (its `filter_cutoff`), Hz."""
    import librosa

    freqs = fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)
    _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, window="hann", filter_scale=1, gamma=0,
                                                alpha=librosa.filters._relative_bandwidth(freqs=freqs))
    return float(cutoff)


@functools.cache
def warm_up_librosa() -> None:
    """librosa.cqt's first call in a process compiles its numba code (~16 s): pay it once."""
    librosa_log_cqt(np.zeros(4096, np.float32), sr=16000, hop_length=512, fmin=32.7, n_bins=84, bins_per_octave=12,
                    amin=1e-4)


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
