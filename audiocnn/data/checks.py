"""Checks prepare runs on every file and on the finished split: bad audio, duplicates, leakage.

`inspect_file` says why a file cannot be used (or returns its facts); it decodes in blocks
(`soundfile.blocks`), so a one-hour file never sits in memory whole. `check_leakage` refuses a
manifest where one recording (by content hash) or one group (speaker, source recording) is in
two splits.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from audiocnn.errors import LeakageError, Unusable
from audiocnn.data.audio import probe_audio

BLOCK_FRAMES = 1 << 16     # samples per channel decoded at a time
MANY_CHANNELS = 2          # more than this is worth a note in the report (downmixed to mono)
HIGH_RATE = 48_000         # above this, a note (resampled at featurize)
LONG_CLIP_S = 60.0         # longer clips get a note (scored by sliding windows)
OFFENDERS_SHOWN = 5


@dataclass(frozen=True)
class FileFacts:
    duration: float
    sr: int
    channels: int
    md5: str
    note: str  # "" or why the file deserves a look though it was kept


def scan_samples(path: str | Path) -> tuple[int, float]:
    """`(non-finite sample count, peak |sample| of the finite ones)`, decoded block by block."""
    non_finite, peak = 0, 0.0
    for block in sf.blocks(str(path), blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
        finite = np.isfinite(block)
        non_finite += int(block.size - np.count_nonzero(finite))
        if finite.any():
            peak = max(peak, float(np.abs(block[finite]).max()))
    return non_finite, peak


def inspect_file(path: str, max_seconds: float | None) -> FileFacts:
    """Facts about an audio file, or `Unusable` with the reason it cannot be used."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise Unusable("missing file: no such file") from None
    except OSError as error:  # a path longer than the system allows, a folder we may not search
        raise Unusable(f"unreadable: {error.strerror or error}") from None
    try:
        os.stat(path)
    except FileNotFoundError:
        raise Unusable("unreadable: dangling symbolic link") from None
    except OSError as error:  # a symbolic link loop
        raise Unusable(f"unreadable: {error.strerror or error}") from None
    if not os.path.isfile(path):
        raise Unusable("unreadable: not a regular file")
    if os.path.getsize(path) == 0:
        raise Unusable("empty: zero-length file")
    if not os.access(path, os.R_OK):
        raise Unusable("unreadable: permission denied")
    try:
        info = probe_audio(path)
    except ValueError:  # a valid header without frames
        raise Unusable("empty: no audio frames") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is a reason to skip, not to stop
        raise Unusable(f"unreadable: {str(error).splitlines()[0]}") from None
    if max_seconds and info.duration > max_seconds:
        raise Unusable(f"too long: {info.duration:.1f} s > data.max_seconds={max_seconds:g}")
    try:
        non_finite, peak = scan_samples(path)
    except Exception as error:  # noqa: BLE001 - e.g. a truncated file whose header promised more
        raise Unusable(f"unreadable: decoding failed: {str(error).splitlines()[0]}") from None
    if non_finite:
        raise Unusable(f"non-finite samples: {non_finite} NaN/inf values")
    if peak == 0.0:
        raise Unusable("silent: every sample is zero")
    notes = []
    if info.channels > MANY_CHANNELS:
        notes.append(f"{info.channels} channels, downmixed to mono")
    if info.sr > HIGH_RATE:
        notes.append(f"{info.sr} Hz, resampled to features.sr")
    if info.duration > LONG_CLIP_S:
        notes.append(f"{info.duration:.0f} s long, scored by sliding windows")
    with open(path, "rb") as handle:
        md5 = hashlib.file_digest(handle, "md5").hexdigest()
    return FileFacts(duration=info.duration, sr=info.sr, channels=info.channels, md5=md5,
                     note="; ".join(notes))


def merge_duplicate_groups(frame: pd.DataFrame) -> pd.Series:
    """Groups where every copy of one recording (same `md5`) takes the group of its first copy.

    Used before audiocnn makes a split, so identical files always land in the same split.
    """
    first_group = frame.drop_duplicates("md5").set_index("md5")["group"]
    return frame["md5"].map(first_group).rename("group")


def _spanning(frame: pd.DataFrame, key: str) -> list[str]:
    splits = frame.groupby(key)["split"].nunique()
    return [str(value) for value in splits[splits > 1].index]


def check_leakage(frame: pd.DataFrame, check_groups: bool) -> None:
    """Raise `LeakageError` when a file hash (always) or a group (if `check_groups`) spans splits.

    `check_groups` is False for splits a dataset defines itself: FSDD's official split, by
    design, has every speaker in every split (it splits by recording index).
    """
    problems = []
    for key, what, applies in (("md5", "identical files (same content hash)", True),
                               ("group", "groups", check_groups)):
        if not applies:
            continue
        offenders = _spanning(frame, key)
        if offenders:
            shown = []
            for value in offenders[:OFFENDERS_SHOWN]:
                rows = frame[frame[key] == value]
                label = " = ".join(rows["path"].head(2)) if key == "md5" else value
                shown.append(f"{label} ({', '.join(sorted(set(rows['split'])))})")
            more = f" and {len(offenders) - OFFENDERS_SHOWN} more" if len(offenders) > OFFENDERS_SHOWN else ""
            problems.append(f"{len(offenders)} {what} in two splits: {'; '.join(shown)}{more}")
    if problems:
        raise LeakageError("leakage between splits, manifest refused: " + " | ".join(problems))
