"""`audiocnn predict --events` on a long recording: the same events as its parts scored alone, no event
duplicated or split at the joins of the chunks it is scored in, and memory that does not grow with the
duration (docs/results.md, "Event detection demo").

The long recording is the demo's scenes (`data=demo_events`, 8 s each) padded with silence to a whole
number of the model's output frames (so the long file's frame grid lines up with each part's), concatenated
in order up to `--hours`, written as 16-bit WAV. Each run is a fresh `audiocnn predict` process; its peak RSS is the
child's `ru_maxrss`. Printed last:

    long_events=<n> same_as_parts=<n> only_long=<n> only_parts=<n> duplicates=<n> splits=<n>
    long_rss_mb=<n> short_rss_mb=<n> long_x=<real time>

`only_long` / `only_parts` are the events that differ, and `near_joins` how many of those reach within one
window of a join (or span it) between two parts, where a window of the long file hears both parts and a part alone
hears the floor. A duplicate is two events of one class that overlap; a split, two that touch.

    python benchmarks/events_long.py --model path/to/model.pt --scenes data/raw/demo_events --hours 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from audiocnn.data.events import read_strong


def write_parts(scenes: list[Path], seconds: float, unit: int, folder: Path) -> list[Path]:
    """The scenes (repeated from the first when they run out) up to `seconds` in all, each padded with
    silence to a multiple of `unit` samples (one output frame of the model), so that the long file's frame
    grid lines up with each part's: `folder/part_<i>.wav`."""
    folder.mkdir(parents=True, exist_ok=True)
    parts, at, index = [], 0.0, 0
    while at < seconds:
        audio, sr = sf.read(str(scenes[index % len(scenes)]), dtype="float32")
        audio = np.concatenate([audio, np.zeros(-len(audio) % unit, np.float32)])
        path = folder / f"part_{index:05d}.wav"
        sf.write(str(path), audio, sr, subtype="PCM_16")
        parts.append(path)
        at += len(audio) / sr
        index += 1
    return parts


def concatenate(parts: list[Path], path: Path) -> list[float]:
    """The parts one after another in one WAV, written block by block; each part's start in seconds."""
    starts, at = [], 0.0
    info = sf.info(str(parts[0]))
    with sf.SoundFile(str(path), "w", samplerate=info.samplerate, channels=1, subtype="PCM_16") as out:
        for part in parts:
            audio, sr = sf.read(str(part), dtype="float32")
            out.write(audio)
            starts.append(at)
            at += len(audio) / sr
    return starts


def predict(model: str, inputs: list[str], output: Path) -> tuple[float, float]:
    """`audiocnn predict INPUTS --events` in a fresh process: (wall seconds, that process's peak RSS in MB)."""
    report = ("import resource, sys; from audiocnn.cli import main; code = main(sys.argv[1:]); "
              "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
              "sys.exit(code)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", report, "predict", *inputs, "--model", model, "--events",
                           "--output", str(output)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - started
    peak = int(done.stderr.rsplit("peak_rss_kb", 1)[1].split()[0])
    return seconds, peak / 1024


def overlaps(events) -> tuple[int, int]:
    """(pairs of one class that overlap, pairs that touch) among consecutive events of each class."""
    duplicates = splits = 0
    by_class: dict[str, list] = {}
    for event in events:
        by_class.setdefault(event.label, []).append(event)
    for items in by_class.values():
        items.sort(key=lambda e: e.onset)
        for a, b in zip(items, items[1:]):
            duplicates += b.onset < a.offset - 1e-9
            splits += abs(b.onset - a.offset) <= 1e-9
    return duplicates, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an events model.pt")
    parser.add_argument("--scenes", required=True, help="a folder of demo_events scenes (scene_*.wav)")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--work", default="/tmp/audiocnn-events-long")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from audiocnn.models.bundle import load_bundle

    features, record = (lambda b: (b["features"], b["events"]))(load_bundle(args.model)[1])
    unit = int(features["hop_length"]) * int(record["time_stride"])
    window = int(features["window_frames"]) * int(features["hop_length"]) / int(features["sr"])
    scenes = sorted(Path(args.scenes).glob("scene_*.wav"))
    parts = write_parts(scenes, args.hours * 3600, unit, work / "parts")
    long_wav, short_wav = work / "long.wav", work / "short.wav"
    starts = concatenate(parts, long_wav)
    concatenate(parts[: max(len(parts) // 4, 1)], short_wav)
    duration = sf.info(str(long_wav)).duration
    long_seconds, long_rss = predict(args.model, [str(long_wav)], work / "long.tsv")
    _, short_rss = predict(args.model, [str(short_wav)], work / "short.tsv")
    predict(args.model, [str(work / "parts")], work / "parts.tsv")
    long_events = read_strong(work / "long.tsv").events
    by_part: dict[str, list] = {}
    for event in read_strong(work / "parts.tsv").events:
        by_part.setdefault(Path(event.filename).name, []).append(event)
    key = lambda label, onset, offset: (label, round(onset, 3), round(offset, 3))
    shifted = {key(e.label, e.onset + start, e.offset + start) for part, start in zip(parts, starts)
               for e in by_part.get(part.name, [])}
    found = {key(e.label, e.onset, e.offset) for e in long_events}
    joins = np.array(starts[1:])
    near = sum(bool(((joins < offset + window) & (joins > onset - window)).any()) for _, onset, offset in found ^ shifted)
    duplicates, splits = overlaps(long_events)
    print(f"{duration / 3600:.2f} h in {long_seconds:.1f} s ({duration / long_seconds:.0f}x real time), "
          f"{len(parts)} parts; peak RSS {long_rss:.0f} MB, {short_rss:.0f} MB for a quarter of it; "
          f"{len(found ^ shifted)} differing events, {near} of them within a window ({window:g} s) of a join "
          "or across one")
    print(f"long_events={len(found)} same_as_parts={len(found & shifted)} only_long={len(found - shifted)} "
          f"only_parts={len(shifted - found)} near_joins={near} duplicates={duplicates} splits={splits} "
          f"long_rss_mb={long_rss:.0f} short_rss_mb={short_rss:.0f} long_x={duration / long_seconds:.0f}")


if __name__ == "__main__":
    main()
