"""Decoding for the front-end: any stretch of a clip, resampled, without decoding the rest.

`load_segment(path, sr, start, stop)` returns samples [start, stop) of the clip as
`load_audio(path, sr)` would give them (mono, at `sr`), zero outside the clip. It reads
only that stretch of the file plus a margin wide enough for the resampling filter, and
starts the read on a sample where the resampler's phase is the same as for the whole
file, so the result equals the slice of the whole resampled clip (float rounding aside).
That keeps memory bounded for clips of any length (`featurize` cuts an hour-long
recording into chunks) and lets on-the-fly training read just a window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# torchaudio.functional.resample's defaults (its filter's half width depends on them).
LOWPASS_FILTER_WIDTH, ROLLOFF = 6, 0.99


def resampled_length(source_frames: int, source_sr: int, sr: int) -> int:
    """Samples of a clip of `source_frames` at `source_sr` once resampled to `sr` (as torchaudio)."""
    if source_sr == sr:
        return source_frames
    gcd = math.gcd(source_sr, sr)
    return math.ceil((sr // gcd) * source_frames / (source_sr // gcd))


def clip_samples(path: str | Path, sr: int) -> int:
    """Length of the clip at `sr` from the file header (nothing decoded)."""
    info = sf.info(str(path))
    return resampled_length(info.frames, info.samplerate, sr)


def _read_mono(path: str, start: int, stop: int) -> torch.Tensor:
    data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)  # (samples, channels)
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return torch.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)


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
    resampled = AF.resample(_read_mono(path, read_lo, read_hi), source_sr, sr)
    offset = first_block * new  # output index of resampled[0]
    out[lo - start: hi - start] = resampled[lo - offset: hi - offset]
    return out
