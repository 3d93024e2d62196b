"""Audio I/O: decoding, downmixing, resampling, non-finite samples, probing."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from audiocnn.data.audio import load_audio, probe_audio


def _tone(freq: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_is_downmixed_to_the_mean_of_its_channels(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (1000, 2)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    mono = load_audio(path, 16000)
    assert mono.dtype == torch.float32 and mono.shape == (1000,)
    np.testing.assert_allclose(mono.numpy(), stereo.mean(axis=1), atol=1e-7)


def test_resampling_gives_the_target_length_and_keeps_pitch(tmp_path):
    path = tmp_path / "a440.wav"
    sf.write(path, _tone(440.0, 44100, 1.0), 44100, subtype="PCM_16")
    wave = load_audio(path, 16000)
    assert wave.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    freqs = np.fft.rfftfreq(len(wave), 1 / 16000)
    assert abs(freqs[spectrum.argmax()] - 440.0) <= 1.0
    # The tone's level survives resampling (no gain error); 0.5 amplitude -> RMS ~0.354.
    assert np.sqrt(np.mean(wave.numpy()[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_no_resampling_at_the_file_rate(tmp_path):
    tone = _tone(1000.0, 8000, 0.25)
    path = tmp_path / "tone.wav"
    sf.write(path, tone, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, 8000).numpy(), tone)


@pytest.mark.parametrize("target_sr", [16000, 8000])
def test_non_finite_samples_become_zero(tmp_path, target_sr):
    samples = _tone(300.0, 16000, 0.1)
    bad = [10, 200, 1500]
    samples[bad[0]], samples[bad[1]], samples[bad[2]] = np.nan, np.inf, -np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    raw, _ = sf.read(path, dtype="float32")
    assert np.isnan(raw[bad[0]]) and np.isinf(raw[bad[1]])  # the file really holds them
    wave = load_audio(path, target_sr)
    assert torch.isfinite(wave).all()
    if target_sr == 16000:
        assert (wave[bad] == 0).all()
        good = np.setdiff1d(np.arange(len(samples)), bad)
        np.testing.assert_array_equal(wave.numpy()[good], samples[good])
    else:
        assert wave.shape == (800,)


def test_probe_reports_duration_rate_and_channels(tmp_path):
    path = tmp_path / "probe.wav"
    sf.write(path, np.zeros((22050, 2), np.float32), 44100, subtype="PCM_16")
    info = probe_audio(path)
    assert info.sr == 44100 and info.channels == 2 and info.frames == 22050
    assert info.duration == pytest.approx(0.5)


def test_probe_raises_on_a_file_without_frames(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    assert path.stat().st_size > 0  # a valid header, no audio
    with pytest.raises(ValueError, match="empty"):
        probe_audio(path)


def test_probe_raises_on_a_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(RuntimeError):
        probe_audio(path)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])  # read by the standard library's `wave`, by soundfile
def test_read_audio_if_opens_the_file_once_and_decodes_it_whole_only_when_asked(tmp_path, monkeypatch, subtype):
    """predict reads a short file's header and samples through one open (it opened each file twice)."""
    import wave as wave_module

    from audiocnn.data import audio

    path = tmp_path / "tone.wav"
    sf.write(path, np.stack([_tone(440, 22050, 0.5), _tone(440, 22050, 0.5, 0.1)], axis=1), 22050, subtype=subtype)
    opened = []
    real_soundfile, real_wave = sf.SoundFile, wave_module.open
    monkeypatch.setattr(audio.sf, "SoundFile", lambda *a, **k: opened.append("soundfile") or real_soundfile(*a, **k))
    monkeypatch.setattr(audio.wave, "open", lambda *a, **k: (lambda h: h.getsampwidth() == 2 and opened.append("wave")
                                                               or h)(real_wave(*a, **k)))
    monkeypatch.setattr(audio.sf, "info", lambda *a, **k: pytest.fail("the header is read from the open file"))
    wave, samples = audio.read_audio_if(path, 16000, lambda n: n <= 8000)
    assert samples == 8000 and opened == ["wave" if subtype == "PCM_16" else "soundfile"]
    monkeypatch.undo()
    np.testing.assert_array_equal(wave, audio.read_audio(path, 16000))  # what decoding it alone gives
    assert audio.read_audio_if(path, 16000, lambda n: n < 8000) == (None, 8000)  # too long: only its length


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("cut_bytes", [0, 1001])  # whole, and a truncated file (fewer samples than its header says)
def test_16_bit_wav_read_by_the_standard_library_gives_soundfiles_samples(tmp_path, channels, cut_bytes):
    from audiocnn.data import audio

    path = tmp_path / "tone.wav"
    tone = np.stack([_tone(440 * (c + 1), 8000, 0.7, 0.1 * c) for c in range(channels)], axis=1)
    sf.write(path, tone, 8000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) - cut_bytes])
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    expected = audio.mono_array(data)
    for sr in (8000, 16000):
        wave, samples = audio.read_audio_if(path, sr, lambda n: True)
        np.testing.assert_array_equal(wave, audio.resample_array(expected, rate, sr))
        assert samples == len(wave) == audio.clip_samples(path, sr)
        assert audio.read_audio_if(path, sr, lambda n: False) == (None, audio.clip_samples(path, sr))


def test_a_wav_with_a_million_chunks_before_its_data_is_left_to_soundfile(tmp_path, monkeypatch):
    """The standard library walks a WAV file's chunks in Python (a second per 8 MB of empty chunks);
    only a plain file (`data` among its first chunks) goes to it: this one is soundfile's to refuse."""
    import struct
    import wave as wave_module

    from audiocnn.data import audio

    body = b"WAVE" + b"junk\x00\x00\x00\x00" * 1_000_000
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    data = b"data" + struct.pack("<I", 16000) + np.zeros(8000, "<i2").tobytes()
    path = tmp_path / "chunks.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) + len(fmt) + len(data)) + body + fmt + data)
    with wave_module.open(str(path)) as pcm:
        assert pcm.getnframes() == 8000  # `wave` would read it, chunk by chunk
    monkeypatch.setattr(audio.wave, "open", lambda *a, **k: pytest.fail("the chunks were walked by `wave`"))
    with pytest.raises(RuntimeError, match="Error opening"):  # soundfile refuses it, as before
        audio.read_audio(path, 8000)


def test_a_fifo_among_the_inputs_is_reported_and_the_others_are_scored(tmp_path):
    """Reading a FIFO waits for a writer (forever, for `predict` on a folder holding one): refused at once,
    in one line, and the folder's other files are scored."""
    import os

    from audiocnn import load_model
    from audiocnn.data.audio import read_audio
    from tests.conftest import untrained_bundle

    fifo = tmp_path / "a_stream.wav"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_audio(fifo, 8000)
    sf.write(tmp_path / "b_tone.wav", _tone(440, 16000, 1.0), 16000, subtype="PCM_16")
    records = load_model(untrained_bundle(tmp_path / "model")).predict([str(fifo), str(tmp_path / "b_tone.wav")])
    assert records[0]["error"].startswith("ValueError: not a regular file") and "label" in records[1]
