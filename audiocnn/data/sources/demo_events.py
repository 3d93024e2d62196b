"""Embedded synthetic event-detection dataset (`data=demo_events`): the demo's instrument sources placed
at random onsets over low background noise, with exact onsets and offsets.

Each scene is `duration` seconds long and holds 1 to `max_events` sources, each a class of
`data=demo_mix` (pluck, bell, organ, wind, membrane, bowed; a class may come twice, and sources may
overlap). A source is a demo clip rendered without its own noise (`demo.render_clip(noise=False)`),
`min_event_seconds`..`max_event_seconds` long, peak-normalised, at a random gain
(-`gain_range_db`..0 dB) and a random onset inside the scene. The background is white or pink
noise at `noise_db` dB RMS (relative to a source's full-scale peak); the scene is then scaled to a
random peak of -20..-1 dBFS (sources and noise alike, so the annotations do not move).

Annotations are where each source really sounds, not its placement window (a source's notes
start late and end early inside it): the 10 ms frames where the placed source's RMS is above the
background's RMS (0 dB local SNR), one event per run of such frames, runs of one source closer
than `MERGE_GAP_S` joined. Onsets and offsets are frame edges (multiples of `ANNOTATION_HOP_S` at
16 kHz), cut at the scene's end.

Every scene draws its randomness from its own generator seeded by `(seed, EVENTS_STREAM, index)`
(its sources: `render_clip(index=index * MAX_EVENTS + slot)`), so the same settings give
byte-identical files and scene i does not depend on how many are made. Written as 16-bit PCM
mono WAVs `<raw>/demo_events/scene_<index:05d>.wav` and the strong TSV
`<raw>/demo_events/events.tsv` (filenames relative to that folder), which `collect` reads back
through `data.events.read_strong`, the reader of every strong TSV. Each scene is its own group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from scipy import signal
from pydantic import Field, model_validator

from audiocnn.data.events import Event, read_strong, write_strong
from audiocnn.data.sources.demo import render_clip, write_pcm16
from audiocnn.data.sources.demo_mix import CLASSES
from audiocnn.data.settings import Generated, Positive, PositiveInt
from audiocnn.errors import show

EVENTS_STREAM = 1_000_033  # keeps the scenes' random streams apart from the demo's and demo_mix's
MAX_EVENTS = 8             # the most sources a scene may hold (data.max_events' ceiling)
MIN_EVENT_SECONDS = 0.5    # render_clip needs room for a note
ANNOTATION_HOP_S = 0.01    # frames of the annotation: 10 ms
MERGE_GAP_S = 0.2          # runs of one source closer than this are one event
TSV = "events.tsv"


@dataclass(frozen=True)
class Scene:
    """One rendered scene: `mixture` (samples,) float64 in [-1, 1]; `background` (samples,) the noise in
    it; `sources` [(label, (samples,) the placed source as it is in the mixture)]; `windows` [(start s,
    end s)] where each source was placed (its rendering's span; it sounds inside it); `events` [(onset s,
    offset s, label)] in onset order."""
    mixture: np.ndarray
    background: np.ndarray
    sources: list[tuple[str, np.ndarray]]
    windows: list[tuple[float, float]]
    events: list[tuple[float, float, str]]


def sounding_spans(source: np.ndarray, floor_rms: float, sr: int) -> list[tuple[float, float]]:
    """[(start s, end s)] where `source`'s RMS over `ANNOTATION_HOP_S` frames exceeds `floor_rms`, runs
    closer than `MERGE_GAP_S` joined; the last frame may be partial (its end is the signal's end)."""
    hop = max(1, int(round(ANNOTATION_HOP_S * sr)))
    n = len(source)
    frames = -(-n // hop)
    padded = np.zeros(frames * hop)
    padded[:n] = source
    rms = np.sqrt(np.mean(padded.reshape(frames, hop) ** 2, axis=1))
    above = np.flatnonzero(rms > floor_rms)
    if above.size == 0:
        return []
    gap = max(1, int(round(MERGE_GAP_S / ANNOTATION_HOP_S)))
    breaks = np.flatnonzero(np.diff(above) > gap)
    starts = np.concatenate([[above[0]], above[breaks + 1]])
    ends = np.concatenate([above[breaks], [above[-1]]]) + 1
    return [(int(a) * hop / sr, min(int(b) * hop, n) / sr) for a, b in zip(starts, ends)]


def render_scene(index: int, *, seed: int, sr: int, duration: float, max_events: int, min_event_seconds: float,
                 max_event_seconds: float, gain_range_db: float, noise_db: float) -> Scene:
    """Scene `index` (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, EVENTS_STREAM, index]))
    n = int(round(duration * sr))
    noise_rms = 10 ** (noise_db / 20)
    background = rng.standard_normal(n)
    if rng.random() < 0.5:  # pink-ish noise, as the demo's
        background = signal.lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786],
                                    [1.0, -2.494956002, 2.017265875, -0.522189400], background)
    background *= noise_rms / (np.sqrt(np.mean(background ** 2)) + 1e-20)
    sources, windows = [], []
    for slot in range(int(rng.integers(1, max_events + 1))):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        source = render_clip(label, seed=seed, index=index * MAX_EVENTS + slot, sr=sr, noise=False,
                             min_duration=min_event_seconds, max_duration=max_event_seconds)[:n]
        source = source * 10 ** (-rng.uniform(0.0, gain_range_db) / 20) / (np.max(np.abs(source)) + 1e-12)
        onset = int(rng.integers(0, n - len(source) + 1))
        placed = np.zeros(n)
        placed[onset:onset + len(source)] = source
        sources.append((label, placed))
        windows.append((onset / sr, (onset + len(source)) / sr))
    mixture = background + sum(placed for _, placed in sources)
    scale = 10 ** (rng.uniform(-20.0, -1.0) / 20) / (np.max(np.abs(mixture)) + 1e-12)
    events = sorted((start, end, label) for label, placed in sources
                    for start, end in sounding_spans(placed, noise_rms, sr))
    return Scene(mixture * scale, background * scale, [(label, placed * scale) for label, placed in sources], windows,
                 events)


def generate_scenes(root: Path, *, seed: int = 0, clips: int = 1600, sr: int = 16000, duration: float = 8.0,
                    max_events: int = 4, min_event_seconds: float = 0.5, max_event_seconds: float = 3.0,
                    gain_range_db: float = 12.0, noise_db: float = -40.0, progress: bool = True) -> Path:
    """Write `clips` scenes and their strong TSV under `root`; return the TSV's path."""
    if clips < 0 or seed < 0 or sr < 8000 or not 1 <= max_events <= MAX_EVENTS or gain_range_db < 0 \
            or not MIN_EVENT_SECONDS <= min_event_seconds <= max_event_seconds <= duration or noise_db >= 0:
        raise ValueError(f"data=demo_events: need clips >= 0, seed >= 0, sr >= 8000, 1 <= max_events <= {MAX_EVENTS}, "
                         f"{MIN_EVENT_SECONDS} <= min_event_seconds <= max_event_seconds <= duration, "
                         "gain_range_db >= 0, noise_db < 0")
    from tqdm.auto import tqdm

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    events = []
    for index in tqdm(range(clips), desc="demo_events scenes", unit="scene", disable=not progress):
        name = f"scene_{index:05d}.wav"
        scene = render_scene(index, seed=seed, sr=sr, duration=duration, max_events=max_events,
                             min_event_seconds=min_event_seconds, max_event_seconds=max_event_seconds,
                             gain_range_db=gain_range_db, noise_db=noise_db)
        write_pcm16(root / name, scene.mixture, sr)
        events += [Event(name, onset, offset, label) for onset, offset, label in scene.events]
    return write_strong(root / TSV, events)


class Settings(Generated):
    """`data=demo_events`: synthetic scenes with timed events, made by `generate_scenes`."""
    name: Literal["demo_events"] = "demo_events"
    clips: PositiveInt = 3200
    duration: Positive = 8.0
    max_events: Annotated[int, Field(ge=1, le=MAX_EVENTS)] = 4
    min_event_seconds: Annotated[float, Field(ge=MIN_EVENT_SECONDS)] = 0.5
    max_event_seconds: Annotated[float, Field(ge=MIN_EVENT_SECONDS)] = 3.0
    gain_range_db: Annotated[float, Field(ge=0)] = 12.0
    noise_db: Annotated[float, Field(ge=-200, lt=0)] = -40.0

    @model_validator(mode="after")
    def _event_lengths(self):
        if self.min_event_seconds > self.max_event_seconds:
            raise ValueError(f"data.min_event_seconds={show(self.min_event_seconds)}: must be <= "
                             f"data.max_event_seconds={show(self.max_event_seconds)}")
        if self.max_event_seconds > self.duration:
            raise ValueError(f"data.max_event_seconds={show(self.max_event_seconds)}: must be <= "
                             f"data.duration={show(self.duration)}")
        return self


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str], list]:
    """Source adapter (`data=demo_events`): generate the scenes under `raw_root/demo_events/`, read their
    TSV back (`read_strong`) and list them, each with its `events` (strong) and weak `labels`."""
    folder = Path(raw_root).resolve() / "demo_events"
    tsv = generate_scenes(folder, seed=data.seed, clips=data.clips, sr=data.sr,
                          duration=data.duration, max_events=data.max_events,
                          min_event_seconds=data.min_event_seconds, max_event_seconds=data.max_event_seconds,
                          gain_range_db=data.gain_range_db, noise_db=data.noise_db)
    annotations = read_strong(tsv, classes=CLASSES, folder=folder, shown=f"demo_events/{TSV}")
    by_file = annotations.events_by_file()
    clips = [{"path": str(folder / f"scene_{i:05d}.wav"), "group": f"scene_{i:05d}", "fold": "",
              "annotation": "strong", "events": by_file.get(f"scene_{i:05d}.wav", []),
              "labels": annotations.labels.get(f"scene_{i:05d}.wav", [])} for i in range(data.clips)]
    return clips, list(CLASSES), annotations.problems
