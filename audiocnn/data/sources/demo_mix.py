"""Embedded synthetic multi-label dataset (`data=demo_mix`): mixtures of 1-3 demo sources.

Each clip mixes 1 to `max_sources` different instrument classes of `data=demo`
(`audiocnn/data/sources/demo.py`: pluck, bell, organ, wind, membrane, bowed; not the order-only
interval pair, whose class is the order of two notes a mixture would blur). Each source is a
demo clip (its own notes, noise and timbre) no longer than the mixture, peak-normalised, at a
random gain (`-gain_range_db`..0 dB) and a random onset; the sum is scaled to a random peak of
-20..-1 dBFS. The clip's labels are its sources' classes. Every mixture draws its randomness from
its own generator seeded by `(seed, MIX_STREAM, mixture index)`, so the same settings give
byte-identical files and mixture i does not depend on how many are made. Written as 16-bit PCM
mono WAVs `<raw>/demo_mix/mix_<index:05d>.wav`; each mixture is its own group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from audiocnn.data.sources.demo import ORDER_ONLY_CLASSES, render_clip, write_pcm16
from audiocnn.data.sources.demo import CLASSES as DEMO_CLASSES
from audiocnn.data.settings import GeneratedClips, Positive, PositiveInt

CLASSES: tuple[str, ...] = tuple(c for c in DEMO_CLASSES if c not in ORDER_ONLY_CLASSES)
MIX_STREAM = 1_000_003  # keeps the mixtures' random streams apart from the demo's (seed, class, clip)
MIN_SOURCE_SECONDS = 1.0


def render_mixture(index: int, *, seed: int, sr: int, min_duration: float, max_duration: float,
                   max_sources: int, gain_range_db: float) -> tuple[np.ndarray, list[str]]:
    """Mixture `index` as float64 in [-1, 1] and its labels (in `CLASSES` order)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, MIX_STREAM, index]))
    count = int(rng.integers(1, max_sources + 1))
    labels = sorted(rng.choice(len(CLASSES), size=count, replace=False).tolist())
    duration = rng.uniform(min_duration, max_duration)
    n = int(round(duration * sr))
    mixture = np.zeros(n)
    for slot, class_index in enumerate(labels):
        source = render_clip(CLASSES[class_index], seed=seed, index=index * max_sources + slot, sr=sr,
                             min_duration=min(MIN_SOURCE_SECONDS, duration), max_duration=duration)[:n]
        onset = int(rng.integers(0, n - len(source) + 1))
        gain = 10 ** (-rng.uniform(0.0, gain_range_db) / 20) / (np.max(np.abs(source)) + 1e-12)
        mixture[onset:onset + len(source)] += gain * source
    mixture *= 10 ** (rng.uniform(-20.0, -1.0) / 20) / (np.max(np.abs(mixture)) + 1e-12)
    return mixture, [CLASSES[i] for i in labels]


def generate_mixtures(root: Path, *, seed: int = 0, clips: int = 1920, sr: int = 16000, min_duration: float = 3.0,
                      max_duration: float = 4.0, max_sources: int = 3, gain_range_db: float = 12.0,
                      progress: bool = True) -> list[dict]:
    """Write `clips` mixtures under `root` and return one dict per clip: {path, labels, group, fold}."""
    if clips < 0 or seed < 0 or sr < 8000 or not 1 <= max_sources <= len(CLASSES) \
            or not MIN_SOURCE_SECONDS <= min_duration <= max_duration or gain_range_db < 0:
        raise ValueError(f"data=demo_mix: need clips >= 0, seed >= 0, sr >= 8000, 1 <= max_sources <= {len(CLASSES)}, "
                         f"{MIN_SOURCE_SECONDS} <= min_duration <= max_duration, gain_range_db >= 0")
    from tqdm.auto import tqdm

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for index in tqdm(range(clips), desc="demo_mix clips", unit="clip", disable=not progress):
        path = root / f"mix_{index:05d}.wav"
        mixture, labels = render_mixture(index, seed=seed, sr=sr, min_duration=min_duration,
                                         max_duration=max_duration, max_sources=max_sources,
                                         gain_range_db=gain_range_db)
        write_pcm16(path, mixture, sr)
        records.append({"path": str(path), "labels": labels, "group": path.stem, "fold": ""})
    return records


class Settings(GeneratedClips):
    """`data=demo_mix`: synthetic mixtures of up to `max_sources` demo notes (multi-label)."""
    name: Literal["demo_mix"] = "demo_mix"
    clips: PositiveInt = 1920
    min_duration: Positive = 3.0
    max_sources: Annotated[int, Field(ge=1, le=6)] = 3
    gain_range_db: Annotated[float, Field(ge=0)] = 12.0


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    """Source adapter (`data=demo_mix`): generate the mixtures under `raw_root/demo_mix/` and list them."""
    clips = generate_mixtures(
        Path(raw_root) / "demo_mix", seed=data.seed, clips=data.clips, sr=data.sr,
        min_duration=data.min_duration, max_duration=data.max_duration,
        max_sources=data.max_sources, gain_range_db=data.gain_range_db,
    )
    return clips, list(CLASSES)
