"""Resampling (soxr HQ, `audiocnn.data.audio`): right numbers, right lengths, and a cost that does
not depend on the rate pair's reduced ratio (16,001 -> 16,000 Hz used to build a multi-GB kernel).

Every file here is a real WAV written in tmp_path at an awkward rate.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from audiocnn.settings import prepare_settings
from audiocnn.data.audio import clip_samples, load_audio, load_segment, resample_array, resampled_length
from tests.conftest import tiny_classifier

REPO = Path(__file__).resolve().parent.parent
RATES = [8001, 16001, 44099, 96000]
TONES = ((440.0, 0.3), (3000.0, 0.2))  # (Hz, amplitude): inside every pair's passband at 16 kHz


def tones(sr: int, seconds: float, times: np.ndarray | None = None) -> np.ndarray:
    """The two-tone test signal sampled at `sr` (or at `times`, in seconds)."""
    t = np.arange(int(seconds * sr)) / sr if times is None else times
    return sum(a * np.sin(2 * np.pi * f * t) for f, a in TONES).astype(np.float32)


def write(path: Path, samples: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sr, subtype=subtype)
    return path


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# A child's own peak RSS: VmHWM. Its `ru_maxrss` would start at this (pytest) process's peak,
# which Linux carries over subprocess's fork + exec, and hide what the child itself used.
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"


@pytest.mark.parametrize("rate", RATES)
def test_load_audio_equals_reference_resamplers(tmp_path, rate):
    import librosa

    x = tones(rate, 1.5)
    path = write(tmp_path / f"{rate}.wav", x, rate)
    wave = load_audio(path, 16000).numpy()
    assert wave.dtype == np.float32
    assert len(wave) == clip_samples(path, 16000) == resampled_length(len(x), rate, 16000)
    reference = librosa.resample(x, orig_sr=rate, target_sr=16000, res_type="soxr_hq")
    # librosa pads soxr's output with zeros to ceil(n * ratio); ours is soxr's own round(n * ratio).
    assert len(reference) - len(wave) in (0, 1)
    np.testing.assert_allclose(wave, reference[: len(wave)], atol=1e-6)
    # An independent reference: the tones themselves at the output instants j / 16000
    # (no delay, no gain error), away from the first and last 50 ms (the file's edges).
    exact = tones(16000, 0, times=np.arange(len(wave)) / 16000)
    np.testing.assert_allclose(wave[800:-800], exact[800:-800], atol=2e-3)
    if rate == 96000:  # an integer ratio: scipy's polyphase resampler agrees too
        from scipy.signal import resample_poly

        poly = resample_poly(x.astype(np.float64), 1, 6)
        np.testing.assert_allclose(wave[800:-800], poly[800:-800], atol=2e-3)


@pytest.mark.parametrize("rate,sr", [(r, 16000) for r in RATES] + [(16001, 8000), (1000, 16000), (384000, 16000)])
def test_load_segment_equals_the_slice_of_load_audio(tmp_path, rate, sr):
    """White noise (every frequency up to Nyquist: the hardest case for a cut-and-resample),
    segments anywhere in the clip, across its start and its end, and beyond it."""
    rng = np.random.default_rng(rate)
    noise = rng.uniform(-0.8, 0.8, int(rate * 2.7)).astype(np.float32)
    path = write(tmp_path / f"noise{rate}.wav", noise, rate)
    whole = load_audio(path, sr).numpy()
    n = len(whole)
    spans = [(0, 700), (-500, 300), (n - 900, n + 100), (n // 2, n // 2 + 1), (1, n - 1), (-10, n + 10),
             (n + 5, n + 50), *[(int(s), int(s) + int(w)) for s, w in zip(rng.integers(0, n, 8), rng.integers(1, sr, 8))]]
    for start, stop in spans:
        segment = load_segment(path, sr, start, stop).numpy()
        expected = np.zeros(stop - start, np.float32)
        lo, hi = max(start, 0), min(stop, n)
        if hi > lo:
            expected[lo - start: hi - start] = whole[lo:hi]
        assert segment.shape == expected.shape
        np.testing.assert_allclose(segment, expected, atol=1e-4, err_msg=f"segment [{start}, {stop}) of {n}")


def test_resampled_length_is_what_soxr_gives_for_a_whole_file():
    rng = np.random.default_rng(0)
    pairs = [(8001, 16000), (16001, 16000), (44099, 16000), (96000, 16000), (48001, 8000), (1, 16000),
             (44100, 16000), (22050, 8000), (384000, 16000)]
    for source_sr, sr in pairs:
        for frames in [1, 2, 3, 7, 10, 999, *rng.integers(1, 50_000, 20).tolist()]:
            if frames * sr / source_sr > 2_000_000:
                continue
            length = len(resample_array(np.zeros(frames, np.float32), source_sr, sr))
            assert length == resampled_length(frames, source_sr, sr), (source_sr, sr, frames)
            assert length == len(soxr.resample(np.zeros(frames, np.float32), source_sr, sr, quality="HQ"))


@pytest.mark.parametrize("rate", [1, 8001, 16001, 48001, 44099, 96000])
def test_resampling_cost_does_not_depend_on_the_reduced_ratio(rate):
    """10 samples and one second at each rate: megabytes (torchaudio built a kernel from the
    reduced ratio: 4 GB and 12 s for 10 samples at 16,001 Hz)."""
    before = max_rss_mb()
    for frames in (10, rate):
        out = resample_array(np.random.default_rng(0).random(frames, np.float32) - 0.5, rate, 16000)
        assert len(out) == resampled_length(frames, rate, 16000) and np.isfinite(out).all()
    assert max_rss_mb() - before < 100


def featurize_peak_rss_mb(root: Path, work: Path) -> float:
    """Prepare the `folder` dataset at `root` (in process), then featurize it in a child process
    (the real stage, CPU, no DataLoader workers); the child's own peak RSS in MB."""
    from audiocnn.config import write_params
    from audiocnn.data.prepare import prepare
    from tests.test_sources import config

    prepare(prepare_settings(config(work, "folder", f"data.root={root}")))
    out = work / "out"
    params = write_params(work / "params.yaml", [
        "data=folder", f"data.root={root}", f"paths.prepared={out / 'prepared'}", f"paths.features={out / 'features'}",
        "features.device=cpu", "features.num_workers=0", "features.batch_size=8"])
    script = ("import sys; sys.argv = ['featurize', '--params', sys.argv[1]]\n"
              "from audiocnn.config import stage_main\nfrom audiocnn.stages import featurize_stage\n"
              f"stage_main(featurize_stage)\nprint('maxrss_kb', {HWM})")
    done = subprocess.run([sys.executable, "-c", script, str(params)], cwd=REPO, check=True, capture_output=True,
                          text=True, timeout=300)
    store = next(p for p in (out / "features").iterdir() if p.is_dir())  # not the writer lock beside it
    assert json.loads((store / "store.json").read_text())["complete"]
    return int(done.stdout.split("maxrss_kb")[-1].split()[0]) / 1024


@pytest.mark.slow  # two featurize processes (~20 s); test_resampling_cost_... catches a big kernel in-process
def test_featurize_peak_rss_with_a_16001_hz_file_is_that_without_it(tmp_path):
    """A 3 KB WAV at 16,001 Hz made featurize peak at 5.3 GB; now it costs what any clip costs."""
    rng = np.random.default_rng(0)
    for root in (tmp_path / "plain", tmp_path / "odd"):
        for label in ("a", "b"):
            for take in range(10):
                write(root / label / f"s{take}.wav", rng.uniform(-0.3, 0.3, 4000).astype(np.float32), 8000, "PCM_16")
    odd = write(tmp_path / "odd" / "a" / "odd.wav", rng.uniform(-0.3, 0.3, 1500).astype(np.float32), 16001, "PCM_16")
    assert odd.stat().st_size < 3200
    plain = featurize_peak_rss_mb(tmp_path / "plain", tmp_path / "work_plain")
    with_odd = featurize_peak_rss_mb(tmp_path / "odd", tmp_path / "work_odd")
    assert with_odd <= 1.10 * plain, f"peak RSS {with_odd:.0f} MB with the 16,001 Hz file, {plain:.0f} MB without"


def test_serving_ten_samples_at_16001_hz_is_fast(tmp_path):
    """In process, through the pyfunc's own code path (request -> decode -> Predictor)."""
    classifier = tiny_classifier(tmp_path)
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 10).tolist()
    classifier.predict(None, {"samples": samples, "sample_rate": 16000})  # warm up the model
    before = max_rss_mb()  # memory, not time, is what a ratio-sized kernel gives away (no timing under load)
    answer = classifier.predict(None, {"samples": samples, "sample_rate": 16001})
    assert len(answer) == 1 and sum(answer[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert max_rss_mb() - before < 200
