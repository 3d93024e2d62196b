"""The one decode path: read (soundfile), downmix, clean, resample — for files, stretches of
files, encoded bytes and sample arrays alike.

prepare (probe), featurize, the on-the-fly loader, evaluate's explanations and serving all
call these functions, so a waveform reaches the CQT through the same steps wherever it
comes from:
    decoded `(samples, channels)` float32
      -> `mono_array`: mean of the channels, NaN/inf samples set to 0 (one bad sample cannot
         poison a batch of CQTs)
      -> `resample_array`: libsoxr (`soxr.resample`, quality `HQ`), one resampler for every rate
         pair; its filter, memory and time do not depend on the pair's reduced ratio
         (torchaudio's kernel has one phase per reduced-ratio step: 16,001 -> 16,000 Hz
         built a 16,000-phase kernel and peaked at several GB for a 3 KB file)
    = mono float32 `(samples,)` at the requested rate.

soxr's one-shot resampling is delay-compensated: output sample j is the band-limited
signal at source time j * source_sr / sr, and a clip of n samples gives
`int(n * sr / source_sr + 0.5)` samples (`resampled_length`).

The work is done in numpy (`read_audio`, `read_segment`, `samples_array`, `resample_array`);
`load_audio`, `load_segment`, `from_samples` hand the same values over as torch tensors
(torch is imported only then, so `predict --model model.onnx` never loads it).

`load_segment(path, sr, start, stop)` returns samples [start, stop) of the clip as
`load_audio(path, sr)` would give them, zero outside the clip. It reads only that stretch
plus `MARGIN` samples (of the lower rate) each side, more than the reach of soxr's HQ
filter, starting on a source sample r that is a multiple of source_sr / gcd(source_sr, sr),
so that r maps to the output index r * sr / source_sr exactly (no phase error). The
result equals the slice of the whole resampled clip within float rounding (1e-5;
tests/test_resampling.py): memory stays bounded for clips of any length (featurize cuts an
hour-long recording into chunks; on-the-fly training reads a window). The alignment block
is at most one second of source audio, so a segment costs at most ~2 s of extra decoding.
"""

from __future__ import annotations

import io
import math
import os
import stat
import wave
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import soundfile as sf
import soxr

QUALITY = "HQ"  # soxr's default (librosa's `soxr_hq`): 20-bit precision, ~0.9 x Nyquist passband
# Samples of the lower of the two rates read beyond each end of a segment: soxr HQ's
# impulse response is below 1e-9 of its peak after ~900 of them for every pair measured
# (8,000-384,000 Hz to 8,000-16,000 Hz), so 2048 is a generous reach.
MARGIN = 2048
# The lowest rate of a file audiocnn decodes (serving's default `min_sample_rate` too). Below it a
# header states an absurd rate, and a stretch's resampling context (MARGIN samples at that rate:
# 2,048 s at 1 Hz) makes a 200 KB file cost CPU-minutes: refused from the header instead.
MIN_SAMPLE_RATE = 1_000
WAV_CHUNKS = 16  # chunks before `data` in a WAV file the standard library reads (`_pcm16_wav`)


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds
    sr: int
    channels: int
    frames: int


def sound_file(path: str | Path) -> str | bytes:
    """`path` as soundfile can open it: soundfile encodes a `str` name strictly, so a name holding
    bytes that are not UTF-8 (Python's surrogate escapes, e.g. from `os.listdir`) goes as bytes.
    `ValueError` for a FIFO, socket or device: reading one would wait for a writer or never end."""
    name = str(path)
    try:
        mode = os.stat(name).st_mode
    except OSError:  # missing, unreadable: the opener says why
        mode = 0
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise ValueError("not a regular file (a FIFO, socket or device): reading it could wait forever")
    try:
        name.encode()
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def check_file_rate(rate: int) -> None:
    """`ValueError` for a file whose header states a rate below `MIN_SAMPLE_RATE`."""
    if rate < MIN_SAMPLE_RATE:
        raise ValueError(f"sample rate {rate} Hz: below {MIN_SAMPLE_RATE} Hz, not a rate audio is recorded at "
                         "(a header that misstates it?)")


def probe_audio(path: str | Path) -> AudioInfo:
    """Header facts of an audio file; raises `RuntimeError`/`ValueError` if unreadable, empty or
    below `MIN_SAMPLE_RATE`."""
    info = sf.info(sound_file(path))
    if info.frames <= 0:
        raise ValueError("empty: no audio frames")
    check_file_rate(info.samplerate)
    return AudioInfo(duration=info.frames / info.samplerate, sr=info.samplerate, channels=info.channels,
                     frames=info.frames)


def _tensor(array: np.ndarray):
    """float32 numpy -> torch tensor (torch imported here: the onnxruntime path never needs it)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def mono_array(samples: np.ndarray) -> np.ndarray:
    """`(samples, channels)` floats -> mono float32 `(samples,)`: channel mean, non-finite -> 0."""
    samples = np.asarray(samples, dtype=np.float32)
    mono = samples[:, 0].copy() if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    bad = ~np.isfinite(mono)  # one pass (`np.nan_to_num` makes four, and a copy)
    if bad.any():
        mono[bad] = 0.0
    return mono


def require_finite(samples: np.ndarray) -> np.ndarray:
    """`samples`, unless it has samples and none of them is finite: then `ValueError` (once its
    NaN/inf are set to 0 there is nothing left to hear; a file or array that is partly non-finite
    keeps its finite samples). Checked where a whole recording is decoded (`read_audio`,
    `samples_array`)."""
    if samples.size and not np.isfinite(samples).any():
        raise ValueError(f"no audio: all {samples.size} samples are NaN or infinite")
    return samples


def resample_array(mono: np.ndarray, source_sr: int, sr: int) -> np.ndarray:
    """`(samples,)` float32 at `source_sr` -> `(resampled_length(samples, source_sr, sr),)` at `sr`.

    Memory and time grow with the input and output lengths only, whatever the rate pair.
    """
    source_sr, sr = int(source_sr), int(sr)
    mono = np.asarray(mono, dtype=np.float32)
    if source_sr == sr:
        return mono
    if len(mono) == 0:
        return np.zeros(0, np.float32)
    return np.ascontiguousarray(soxr.resample(mono, source_sr, sr, quality=QUALITY), dtype=np.float32)


def resampled_length(source_frames: int, source_sr: int, sr: int) -> int:
    """Samples of a clip of `source_frames` at `source_sr` once resampled to `sr` (soxr's count)."""
    if source_sr == sr:
        return source_frames
    return int(source_frames * float(sr) / float(source_sr) + 0.5)  # as libsoxr's one-shot computes it


def clip_samples(path: str | Path, sr: int) -> int:
    """Length of the clip at `sr` from the file header (nothing decoded); `ValueError` below
    `MIN_SAMPLE_RATE`."""
    info = sf.info(sound_file(path))
    check_file_rate(info.samplerate)
    return resampled_length(info.frames, info.samplerate, sr)


@contextmanager
def _pcm16_wav(path: str | Path) -> Iterator[wave.Wave_read | None]:
    """The file opened by `wave` when it is a plain 16-bit PCM WAV, else None. Plain: RIFF/WAVE with its
    `data` chunk among its first `WAV_CHUNKS` chunks. `wave` walks a file's chunks in Python, slowly on a
    file of a million empty chunks, which soundfile refuses at once; such a file, and any `wave` cannot
    parse, goes to soundfile (tests/test_audio.py)."""
    try:
        file = open(sound_file(path), "rb")
    except OSError:  # soundfile says why
        yield None
        return
    with file:
        try:
            pcm = wave.open(file) if _data_chunk_among_first(file, WAV_CHUNKS) else None
        except Exception:  # noqa: BLE001 - not a PCM WAV `wave` reads (float, 24-bit, extensible): soundfile's
            pcm = None
        yield pcm if pcm is not None and pcm.getsampwidth() == 2 else None


def _data_chunk_among_first(file: BinaryIO, chunks: int) -> bool:
    """Whether the RIFF/WAVE `file` has its `data` chunk among its first `chunks` chunks; `file` back at 0."""
    found = False
    if file.read(4) == b"RIFF" and file.read(8)[4:] == b"WAVE":
        for _ in range(chunks):
            header = file.read(8)
            if len(header) < 8 or header[:4] == b"data":
                found = header[:4] == b"data"
                break
            size = int.from_bytes(header[4:], "little")
            file.seek(size + (size & 1), os.SEEK_CUR)  # chunks are word-aligned
    file.seek(0)
    return found


def read_audio(path: str | Path, sr: int) -> np.ndarray:
    """Decode the file at `path` to a mono float32 numpy waveform at `sr` Hz: `(samples,)`."""
    return read_audio_if(path, sr, lambda samples: True)[0]


def read_audio_if(path: str | Path, sr: int, whole: Callable[[int], bool]) -> tuple[np.ndarray | None, int]:
    """Open the file once: `(read_audio's waveform (samples,), samples)` when `whole(samples)` says to decode
    it whole, else `(None, samples)`; `samples` is its length at `sr` (`clip_samples`).

    A plain 16-bit PCM WAV file (most recordings; `_pcm16_wav`) is read by the standard library's `wave`:
    the same values as soundfile (sample / 32768) without its per-file cost, which on short clips was a
    large part of `audiocnn predict`'s time (docs/results.md). Any other file is read by soundfile, whose
    errors are the ones reported."""
    with _pcm16_wav(path) as pcm:
        if pcm is not None:
            rate, channels = pcm.getframerate(), pcm.getnchannels()
            check_file_rate(rate)
            if not whole(resampled_length(pcm.getnframes(), rate, sr)):  # the header's count: an upper bound
                return None, clip_samples(path, sr)  # soundfile's count, as `read_segment` reads the file
            raw = pcm.readframes(pcm.getnframes())  # fewer bytes than the header says in a truncated file
    if pcm is not None:
        data = np.frombuffer(raw[: len(raw) // (2 * channels) * 2 * channels], "<i2").astype(np.float32)
        data *= np.float32(1 / 32768)  # in place: a page of memory costs more here than the arithmetic
        mono = data if channels == 1 else data.reshape(-1, channels).mean(axis=1, dtype=np.float32)  # finite
        return resample_array(mono, rate, sr), resampled_length(len(mono), rate, sr)
    with sf.SoundFile(sound_file(path)) as handle:
        check_file_rate(handle.samplerate)
        samples = resampled_length(handle.frames, handle.samplerate, sr)
        if not whole(samples):
            return None, samples
        data = handle.read(dtype="float32", always_2d=True)  # (samples, channels)
    return resample_array(mono_array(require_finite(data)), handle.samplerate, sr), samples


def load_audio(path: str | Path, sr: int):
    """`read_audio` as a torch tensor `(samples,)`."""
    return _tensor(read_audio(path, sr))


def probe_bytes(data: bytes) -> AudioInfo:
    """Header facts of an encoded audio file held in memory; raises like `probe_audio`."""
    info = sf.info(io.BytesIO(data))
    if info.frames <= 0:
        raise ValueError("empty: no audio frames")
    return AudioInfo(duration=info.frames / info.samplerate, sr=info.samplerate, channels=info.channels,
                     frames=info.frames)


def samples_array(samples: np.ndarray, sample_rate: int, sr: int) -> np.ndarray:
    """A sample array `(samples,)` or `(samples, channels)` at `sample_rate` -> mono numpy `(samples,)` at `sr`."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"samples: expected a non-empty (samples,) or (samples, channels) array, got {array.shape}")
    return resample_array(mono_array(require_finite(array)), sample_rate, sr)


def from_samples(samples: np.ndarray, sample_rate: int, sr: int):
    """`samples_array` as a torch tensor `(samples,)`."""
    return _tensor(samples_array(samples, sample_rate, sr))


def _read_mono(path: str | bytes, start: int, stop: int) -> np.ndarray:
    data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    return mono_array(data)


def load_segment(path: str | Path, sr: int, start: int, stop: int):
    """`read_segment` as a torch tensor `(stop - start,)`."""
    return _tensor(read_segment(path, sr, start, stop))


def read_segment(path: str | Path, sr: int, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of the mono clip at `sr`: shape `(stop - start,)`, zeros outside the clip."""
    path = sound_file(path)
    info = sf.info(path)
    source_sr, source_frames = info.samplerate, info.frames
    total = resampled_length(source_frames, source_sr, sr)
    out = np.zeros(stop - start, np.float32)
    lo, hi = max(start, 0), min(stop, total)
    if hi <= lo:
        return out
    if source_sr == sr:
        out[lo - start: hi - start] = _read_mono(path, lo, hi)
        return out
    gcd = math.gcd(source_sr, sr)
    orig, new = source_sr // gcd, sr // gcd  # `orig` source samples span exactly `new` output samples
    reach = math.ceil(MARGIN * max(1.0, source_sr / sr))  # source samples
    # Start on a multiple of `orig`: source sample read_lo is output sample read_lo * new / orig exactly.
    first_block = max((lo * source_sr // sr - reach) // orig, 0)
    read_lo = first_block * orig
    read_hi = min(source_frames, -(-hi * source_sr // sr) + reach)
    resampled = resample_array(_read_mono(path, read_lo, read_hi), source_sr, sr)
    offset = first_block * new  # output index of resampled[0]
    out[lo - start: hi - start] = resampled[lo - offset: hi - offset]
    return out
