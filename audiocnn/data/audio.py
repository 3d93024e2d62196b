"""Audio I/O: decode with soundfile, downmix to mono, resample with torchaudio."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


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


def load_audio(path: str | Path, sr: int) -> torch.Tensor:
    """Decode `path` to a mono float32 waveform at `sr` Hz: shape `(samples,)`.

    Channels are averaged; non-finite samples become 0 so one bad sample cannot poison
    a batch of CQTs.
    """
    data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    mono = torch.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    if file_sr != sr:
        mono = AF.resample(mono, file_sr, sr)
    return mono
