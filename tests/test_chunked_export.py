"""The exported graph scores a chunk: chunks join exactly, exported = eager on long recordings at any
hop, and memory does not grow with a recording's duration (ONNX, TorchScript, explain)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiocnn import load_model
from audiocnn.cli import main
from audiocnn.features.sliding import window_starts
from audiocnn.inference.chunks import chunks, cut, frame_count
from audiocnn.inference.predictor import Predictor
from tests.conftest import REPO
from tests.test_export import bundle_for

LIMIT_MB = 1200  # docs/robustness.md: each case stays under 1.2 GB


def long_wav(path: Path, seconds: float, sr: int = 8000, seed: int = 0) -> Path:
    """A 16-bit WAV of `seconds` of tones over noise, written in one-minute blocks (cheap for hours)."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as out:
        for first in range(0, int(seconds * sr), 60 * sr):
            t = np.arange(first, min(first + 60 * sr, int(seconds * sr))) / sr
            pitch = 110 * 2 ** ((t // 1.5) % 24 / 12)  # a new semitone every 1.5 s: windows differ
            out.write(0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(len(t)))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained crnn_gru bundle (the default model and front-end) and its ONNX and TorchScript files."""
    root = tmp_path_factory.mktemp("chunked")
    folder = bundle_for(root, "crnn_gru")
    files = {}
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
        files[fmt] = root / f"model{suffix}"
        assert main(["export", "--model", str(folder), "--format", fmt, "--output", str(files[fmt])]) == 0
    return folder, files


def test_the_chunks_hold_every_window_of_the_grid_once_within_their_bounds():
    for samples, hop in [(10, None), (70_000, None), (3_000_000, None), (3_000_000, 7), (3_000_000, 500)]:
        total = frame_count(samples, 512)
        got = []
        for chunk in chunks(samples, 512, 128, 8704, hop, max_frames=1875, max_windows=64):
            assert len(chunk.starts) <= 64 and chunk.starts[0] == 0
            f1 = (chunk.stop - 8704) // 512
            assert chunk.start == chunk.first * 512 - 8704 and f1 - chunk.first <= 1875
            assert f1 == min(chunk.first + chunk.starts[-1] + 128, total)
            got += (chunk.first + chunk.starts).tolist()
        assert got == window_starts(total, 128, hop)


def test_chunks_join_exactly(exported):
    """The frames of each chunk are the slice of the whole recording's frames, and the window
    probabilities over a long recording, chunk by chunk, are those of the graph run on it whole."""
    folder, _ = exported
    predictor = Predictor.load(folder)
    scorer, margin, hop_length = predictor.graph(), predictor.margin, predictor.hop_length
    rng = np.random.default_rng(1)
    samples = 150 * predictor.sr + 1234
    wave = torch.from_numpy(rng.uniform(-0.5, 0.5, samples).astype(np.float32))
    whole = torch.nn.functional.pad(wave, (margin, frame_count(samples, hop_length) * hop_length + margin - samples))
    with torch.inference_mode():
        frames = scorer.chunk_frames(whole[None])[0]  # (n_bins, frames) of the whole recording
        assert frames.shape[1] == frame_count(samples, hop_length)
        starts = window_starts(frames.shape[1], predictor.window)
        reference = scorer(whole[None], torch.tensor(starts))[0]  # one call: the whole recording
        got = []
        for chunk in chunks(samples, hop_length, predictor.window, margin, max_frames=1000, max_windows=9):
            piece = torch.from_numpy(cut(wave.numpy(), chunk.start, chunk.stop))[None]
            chunk_frames = scorer.chunk_frames(piece)[0]
            torch.testing.assert_close(chunk_frames, frames[:, chunk.first: chunk.first + chunk_frames.shape[1]],
                                       atol=1e-2, rtol=0)  # float16 values: at most one step apart
            got.append(scorer(piece, torch.from_numpy(chunk.starts))[0])
    torch.testing.assert_close(torch.cat(got), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hop_seconds", [None, pytest.param(0.5, marks=pytest.mark.slow)])  # 0.5: 25 s
def test_exported_equals_eager_on_a_long_recording_at_any_hop(exported, tmp_path, hop_seconds):
    """150 s at 8 kHz (resampled to 16 kHz, read stretch by stretch: longer than features.chunk_seconds),
    and its first 75 s as an array."""
    folder, files = exported
    path = long_wav(tmp_path / "long.wav", 150)
    array = sf.read(path, dtype="float32")[0][: 8000 * 75]
    eager = load_model(folder).predict([path], timeline=True, hop_seconds=hop_seconds)
    eager += load_model(folder).predict([array], sample_rate=8000, timeline=True, hop_seconds=hop_seconds)
    for file in files.values():
        model = load_model(file, trust_code=True)
        got = model.predict([path], timeline=True, hop_seconds=hop_seconds)
        got += model.predict([array], sample_rate=8000, timeline=True, hop_seconds=hop_seconds)
        for a, b in zip(eager, got):
            assert "error" not in b, b
            assert [w["start_s"] for w in b["timeline"]] == [w["start_s"] for w in a["timeline"]]
            np.testing.assert_allclose([w["probability"] for w in b["timeline"]],
                                       [w["probability"] for w in a["timeline"]], atol=1e-4)
            np.testing.assert_allclose(list(b["probabilities"].values()), list(a["probabilities"].values()),
                                       atol=1e-4)
    step = (16 if hop_seconds else 128 // 2) * 512 / 16000  # 0.5 s is 16 frames of 32 ms
    assert eager[0]["timeline"][1]["start_s"] == pytest.approx(step, abs=1e-3)
    assert len(eager[0]["timeline"]) == (286 if hop_seconds else 73)


# The child's own peak RSS (VmHWM), printed last; `ru_maxrss` would start at pytest's peak.
HWM = "print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024)"


def peak_rss_mb(code: str, *args) -> int:
    """Run `code` (argv: `args`) in a fresh Python; its peak RSS in MB (it must exit 0)."""
    result = subprocess.run([sys.executable, "-c", f"{code}\n{HWM}", *map(str, args)], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.strip().splitlines()[-1])


CLI = "import sys; from audiocnn.cli import main; assert main(sys.argv[1:]) == 0"


def commands(files: dict, folder: Path, audio: Path, out: Path) -> dict[str, list]:
    return {"onnx predict": ["predict", audio, "--model", files["onnx"], "--output", out / "onnx.csv"],
            "torchscript predict": ["predict", audio, "--model", files["torchscript"], "--trust-torchscript",
                                    "--output", out / "ts.csv"],
            "explain": ["explain", audio, "--model", folder, "--output", out / "cam.png"]}


def test_onnx_predict_peak_memory_does_not_grow_with_duration(exported, tmp_path):
    """20 minutes cost what 3 minutes cost, within 50 MB (about 300 MB; read whole, the 20 minutes'
    graph alone took about 900 MB). Both are several chunks, scored side by side (`exported.ordered_map`)."""
    folder, files = exported
    short, long = long_wav(tmp_path / "short.wav", 3 * 60), long_wav(tmp_path / "long.wav", 20 * 60)
    base = peak_rss_mb(CLI, *commands(files, folder, short, tmp_path)["onnx predict"])
    peak = peak_rss_mb(CLI, *commands(files, folder, long, tmp_path)["onnx predict"])
    assert peak < base + 50, f"{peak} MB for 20 minutes, {base} MB for one"


@pytest.mark.slow  # about 25 s (make test-slow, CI)
def test_explain_draws_at_most_eight_windows_for_the_class_predict_gives(exported, tmp_path, monkeypatch):
    """Two minutes: Grad-CAM sees 8 windows' frames (the whole clip when shorter), for predict's label."""
    import audiocnn.inference.explain as explain

    folder, _ = exported
    seen = []
    grad_cam = explain.grad_cam
    monkeypatch.setattr(explain, "grad_cam", lambda model, x, classes: seen.append(tuple(x.shape)) or
                        grad_cam(model, x, classes))
    for seconds, frames in ((120, 8 * 128), (30, 30 * 16000 // 512 + 1), (1, 128)):
        audio = long_wav(tmp_path / f"{seconds}.wav", seconds)
        _, label, probability = explain.explain_file(audio, str(folder), tmp_path / "cam.png")
        assert seen.pop() == (1, 1, 84, frames)
        record = load_model(folder).predict([audio])[0]
        assert label == record["label"] and probability == pytest.approx(record["confidence"], abs=1e-6)


@pytest.mark.slow
def test_explain_on_half_an_hour_stays_under_the_limit(exported, tmp_path):
    """Explain scores in chunks and draws at most 8 windows: about 930 MB, of which importing torch
    takes about 700 (it took the whole spectrogram through Grad-CAM: 1,034 MB for 10 minutes, about
    15 MB more per minute; OOM-killed on 2 hours)."""
    folder, files = exported
    audio = long_wav(tmp_path / "half_an_hour.wav", 30 * 60)
    assert peak_rss_mb(CLI, *commands(files, folder, audio, tmp_path)["explain"]) < LIMIT_MB
    assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_two_hour_recording_stays_under_the_limit(exported, tmp_path):
    """The cases of docs/robustness.md: a 2-hour 8 kHz WAV (115 MB; ONNX took 5.4 GB, explain was OOM-killed):
    ONNX about 215 MB, TorchScript about 930 MB, explain about 925 MB (torch's import: about 700 MB)."""
    folder, files = exported
    audio = long_wav(tmp_path / "two_hours.wav", 2 * 3600)
    for name, argv in commands(files, folder, audio, tmp_path).items():
        peak = peak_rss_mb(CLI, *argv)
        assert peak < LIMIT_MB, f"{name}: {peak} MB"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "bundle"])
def test_a_200_kb_wav_declaring_1_hz_is_refused_from_its_header(exported, tmp_path, fmt):
    """27.8 hours at the model's rate (6.4 GB of float32 read at once before; then, read stretch by
    stretch, about 20 CPU-minutes: each stretch resamples 2,048 s of 1 Hz context). Now one reason,
    in seconds, from the header; the other files of the run are predicted."""
    import time

    folder, files = exported
    audio = tmp_path / "one_hz.wav"
    sf.write(audio, np.random.default_rng(0).uniform(-0.5, 0.5, 100_000), 1, subtype="PCM_16")
    assert audio.stat().st_size < 210_000
    good = long_wav(tmp_path / "good.wav", 2)
    started = time.monotonic()
    bad, fine = load_model(folder if fmt == "bundle" else files[fmt], trust_code=True).predict([audio, good])
    assert time.monotonic() - started < 60
    assert "label" not in bad and "sample rate 1 Hz: below 1000 Hz" in bad["error"], bad
    assert "error" not in fine, fine


def test_a_file_exported_before_the_graph_was_chunked_is_refused(exported, tmp_path):
    import json

    import onnx

    from audiocnn.errors import BundleError

    _, files = exported
    model = onnx.load(str(files["onnx"]))
    entry = next(e for e in model.metadata_props if e.key == "audiocnn")
    meta = json.loads(entry.value)
    del meta["format"], meta["margin_samples"]
    entry.value = json.dumps(meta)
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(BundleError, match="export it again"):
        load_model(tmp_path / "old.onnx")
