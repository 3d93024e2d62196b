"""The one decode path: read (soundfile), downmix, clean, resample — for files, stretches of
files, encoded bytes and sample arrays alike.

prepare (probe), featurize, the on-the-fly loader, evaluate's explanations and serving all
call these functions, so a waveform reaches the CQT through the same steps wherever it
comes from:
    decoded `(samples, channels)` float32
      -> `to_mono`: mean of the channels, NaN/inf samples set to 0 (one bad sample cannot
         poison a batch of CQTs)
      -> `resample`: torchaudio's windowed-sinc resampler, built once per rate pair
    = mono float32 `(samples,)` at the requested rate.

`load_segment(path, sr, start, stop)` returns samples [start, stop) of the clip as
`load_audio(path, sr)` would give them, zero outside the clip. It reads only that stretch
plus a margin wide enough for the resampling filter, starting on a sample where the
resampler's phase is the same as for the whole file, so the result equals the slice of
the whole resampled clip (float rounding aside): memory stays bounded for clips of any
length (featurize cuts an hour-long recording into chunks; on-the-fly training reads a window).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

# torchaudio's resampler defaults (its filter's half width depends on them).
LOWPASS_FILTER_WIDTH, ROLLOFF = 6, 0.99


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds
    sr: int
    channels: int
    frames: int


def probe_audio(path: str | Path) -> AudioInfo:
    """Header facts of an audio file; raises `RuntimeError`/`ValueError` if unreadable or empty."""
    info = sf.info(str(path))
    if info.frames <= 0:
        raise ValueError("empty: no audio frames")
    return AudioInfo(duration=info.frames / info.samplerate, sr=info.samplerate, channels=info.channels,
                     frames=info.frames)


def to_mono(samples: np.ndarray) -> torch.Tensor:
    """`(samples, channels)` floats -> mono float32 `(samples,)`: channel mean, non-finite -> 0."""
    mono = torch.from_numpy(np.ascontiguousarray(np.asarray(samples, dtype=np.float32).mean(axis=1)))
    return torch.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)


@lru_cache(maxsize=8)
def _resampler(source_sr: int, sr: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(source_sr, sr, lowpass_filter_width=LOWPASS_FILTER_WIDTH, rolloff=ROLLOFF)


def resample(mono: torch.Tensor, source_sr: int, sr: int) -> torch.Tensor:
    """`(samples,)` at `source_sr` -> `(resampled_length(samples, source_sr, sr),)` at `sr`."""
    if int(source_sr) == int(sr):
        return mono
    with torch.inference_mode():
        return _resampler(int(source_sr), int(sr))(mono)


def resampled_length(source_frames: int, source_sr: int, sr: int) -> int:
    """Samples of a clip of `source_frames` at `source_sr` once resampled to `sr`."""
    if source_sr == sr:
        return source_frames
    gcd = math.gcd(source_sr, sr)
    return math.ceil((sr // gcd) * source_frames / (source_sr // gcd))


def clip_samples(path: str | Path, sr: int) -> int:
    """Length of the clip at `sr` from the file header (nothing decoded)."""
    info = sf.info(str(path))
    return resampled_length(info.frames, info.samplerate, sr)


def load_audio(path: str | Path, sr: int) -> torch.Tensor:
    """Decode the file at `path` to a mono float32 waveform at `sr` Hz: `(samples,)`."""
    data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    return resample(to_mono(data), file_sr, sr)


def decode_bytes(data: bytes, sr: int) -> torch.Tensor:
    """An encoded audio file's bytes (WAV, FLAC, OGG...) -> mono float32 `(samples,)` at `sr` Hz."""
    samples, file_sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return resample(to_mono(samples), file_sr, sr)


def from_samples(samples: np.ndarray, sample_rate: int, sr: int) -> torch.Tensor:
    """A sample array `(samples,)` or `(samples, channels)` at `sample_rate` -> mono `(samples,)` at `sr`."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"samples: expected a non-empty (samples,) or (samples, channels) array, got {array.shape}")
    return resample(to_mono(array), sample_rate, sr)


def _read_mono(path: str, start: int, stop: int) -> torch.Tensor:
    data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    return to_mono(data)


def load_segment(path: str | Path, sr: int, start: int, stop: int) -> torch.Tensor:
    """Samples [start, stop) of the mono clip at `sr`: shape `(stop - start,)`, zeros outside the clip."""
    path = str(path)
    info = sf.info(path)
    source_sr, source_frames = info.samplerate, info.frames
    total = resampled_length(source_frames, source_sr, sr)
    out = torch.zeros(stop - start)
    lo, hi = max(start, 0), min(stop, total)
    if hi <= lo:
        return out
    if source_sr == sr:
        out[lo - start: hi - start] = _read_mono(path, lo, hi)
        return out
    gcd = math.gcd(source_sr, sr)
    orig, new = source_sr // gcd, sr // gcd
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))
    margin = math.ceil((width + orig) / orig) + 1  # in blocks of `orig` source samples
    # Read whole blocks of `orig` source samples (= `new` output samples) so the phase matches.
    first_block = max(lo // new - margin, 0)
    read_lo = first_block * orig
    read_hi = min(source_frames, (math.ceil(hi / new) + margin) * orig)
    resampled = resample(_read_mono(path, read_lo, read_hi), source_sr, sr)
    offset = first_block * new  # output index of resampled[0]
    out[lo - start: hi - start] = resampled[lo - offset: hi - offset]
    return out
