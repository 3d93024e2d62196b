"""The front-end against the reference, `librosa.cqt`: pure tones over every bin, a sweep,
white noise and real speech (FSDD).

Normalisation is matched (same Q, L1 kernels scaled by sqrt(length), zero padding), so
log-magnitudes are compared as they are, floored 80 dB below the clip's peak. The
correlation is taken over the cells whose kernel lies inside the clip; the edges, where
librosa's and our decimation filters see the zero padding differently, are measured and
reported by benchmarks/cqt_variants.py (docs/features.md). Both front-ends, and the
multirate computation against the full-rate one: tests/test_cqt_multirate.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocnn.data.audio import load_audio
from audiocnn.features.cqt import LogCQT
from audiocnn.features.reference import (bin_frequency, inside_cells, librosa_log_cqt, log_correlation, log_sweep,
                                         peak_bin, tone, warm_up_librosa, white_noise)

PARAMS = dict(sr=16000, hop_length=512, fmin=32.70, n_bins=84, bins_per_octave=12, amin=1e-4)
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
MIN_CORRELATION = 0.997  # measured minimum 0.998 (tones), benchmarks/cqt_variants.py
pytestmark = pytest.mark.filterwarnings("ignore:n_fft=")  # librosa, on clips shorter than its top octave FFT


@pytest.fixture(scope="module")
def reference():
    """librosa.cqt with the front-end's settings; its numba compilation (~16 s) is paid once per session."""
    warm_up_librosa()
    return lambda wave: librosa_log_cqt(wave, **PARAMS)


@pytest.fixture(scope="module")
def ours():
    frontend = LogCQT(**PARAMS).eval()

    def transform(waves: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return frontend(torch.from_numpy(np.atleast_2d(waves))).numpy()

    transform.kernel_lengths = frontend.cqt.lenghts.numpy()
    return transform


def _inside_correlation(ours_log: np.ndarray, reference_log: np.ndarray, samples: int, lengths) -> float:
    return log_correlation(ours_log, reference_log, inside_cells(samples, PARAMS["hop_length"], lengths))


def test_pure_tones_peak_in_their_bin_and_match_librosa_over_every_bin(ours, reference):
    n_bins, sr = PARAMS["n_bins"], PARAMS["sr"]
    tones = np.stack([tone(bin_frequency(k, PARAMS["fmin"], PARAMS["bins_per_octave"]), sr, 2.0)
                      for k in range(n_bins)])
    spectra = ours(tones)
    margin = math.ceil(ours.kernel_lengths.max() / 2 / PARAMS["hop_length"])  # frames the edges reach
    for k in range(n_bins):
        expected = reference(tones[k])
        assert spectra[k].shape == expected.shape
        assert peak_bin(spectra[k], margin) == peak_bin(expected, margin) == k
        correlation = _inside_correlation(spectra[k], expected, tones.shape[1], ours.kernel_lengths)
        assert correlation >= MIN_CORRELATION, f"bin {k}: correlation {correlation:.4f}"


@pytest.mark.parametrize("signal", ["sweep", "noise"])
def test_sweep_and_noise_match_librosa(ours, reference, signal):
    sr = PARAMS["sr"]
    top = bin_frequency(PARAMS["n_bins"] - 1, PARAMS["fmin"], PARAMS["bins_per_octave"])
    wave = log_sweep(PARAMS["fmin"], top, sr, 4.0) if signal == "sweep" else white_noise(sr, 3.0)
    spectrum, expected = ours(wave)[0], reference(wave)
    assert _inside_correlation(spectrum, expected, len(wave), ours.kernel_lengths) >= MIN_CORRELATION
    assert log_correlation(spectrum, expected) >= 0.95  # edges included


@pytest.mark.skipif(not FSDD.exists(), reason="FSDD not found next to the repository")
def test_real_speech_matches_librosa_clip_by_clip(ours, reference):
    paths = sorted(FSDD.glob("*.wav"))[::150]  # 20 clips: every digit, every speaker
    for path in paths:
        wave = load_audio(path, PARAMS["sr"]).numpy()
        spectrum, expected = ours(wave)[0], reference(wave)
        correlation = _inside_correlation(spectrum, expected, len(wave), ours.kernel_lengths)
        assert correlation >= MIN_CORRELATION, f"{path.name}: correlation {correlation:.4f}"
