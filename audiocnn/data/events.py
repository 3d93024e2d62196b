"""Strong (timed) and weak (clip-level) event annotations: DCASE TSVs in, validated records and
frame-level targets out. Numpy only (no torch): the data layer's part of sound event detection.

Formats (tab-separated, UTF-8, one header line; DCASE / DESED):
- strong: `filename<TAB>onset<TAB>offset<TAB>event_label`, times in seconds from the start of
  the file; one row per event. A row with a filename and three blank cells names a file that
  holds no event (DESED writes those).
- weak: `filename<TAB>event_labels`, the clip's labels comma-separated (`Dog,Speech`).

`read_strong` / `read_weak` never raise for a bad row: each one is skipped and recorded as a
`Problem` (the TSV, the row's line number, the filename, what is wrong), and the good rows are
kept. Only a file that cannot be read at all (missing, not a TSV of that kind: its header) raises
`InputError` in one line naming it. Times an event runs past its file's end are only known once
the audio is probed: `fit_to_duration` clips them there (or drops an event that starts at or
after the end), reporting each.

Frame targets (`frame_targets`): frame i covers [i·h, (i+1)·h), h = `frame_seconds`; an event
[onset, offset) marks every frame it overlaps by more than nothing: frames floor(onset/h) to
ceil(offset/h) - 1. So an onset on a boundary k·h starts at frame k, an offset on a boundary k·h
ends at frame k - 1 (frame k is not marked), and an event shorter than a frame still marks the
one frame (or two, across a boundary) it touches. Times within 1e-6 frame of a boundary count as
on it (0.3 / 0.1 is 2.9999999999999996 in floats). This is the rule of the DCASE task 4
baseline's encoder (onset floored, offset ceiled).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

import numpy as np

from audiocnn import atomic
from audiocnn.errors import InputError

STRONG_COLUMNS = ("filename", "onset", "offset", "event_label")
WEAK_COLUMNS = ("filename", "event_labels")
WEAK_SEPARATOR = ","      # between the labels of one clip in a weak TSV's event_labels cell
EVENTS_FILE = "events.tsv"  # prepare's strong annotations, beside manifest.csv (filenames: manifest paths)
BOUNDARY_TOLERANCE = 1e-6  # frames: a time this close to a frame boundary counts as on it
SKIPPED, CLIPPED = "skipped", "clipped"


@dataclass(frozen=True)
class Event:
    """One annotated event: `label` sounds in `filename` from `onset` to `offset` (seconds, onset < offset).

    `source` and `row` say where it was read (the TSV and its line number; "" and 0 when made in code)."""
    filename: str
    onset: float
    offset: float
    label: str
    source: str = ""
    row: int = 0


@dataclass(frozen=True)
class Problem:
    """A row (or an event of it) that was skipped or changed: `line()` is the one-line reason."""
    source: str    # the TSV
    row: int       # its line number (the header is line 1)
    filename: str  # as written in the row ("" when the row has none)
    kind: str      # what is wrong, short (report.json counts them): e.g. "onset after offset"
    detail: str    # the values concerned
    action: str = SKIPPED  # SKIPPED: the row (or event) is left out; CLIPPED: its offset was moved

    def line(self) -> str:
        return f"{self.source} row {self.row}: {self.kind}: {self.detail}; {self.action}"

    def as_dict(self) -> dict:
        return {**asdict(self), "reason": self.line()}


@dataclass
class Annotations:
    """What one TSV holds once checked: good `events` (strong TSVs), `labels` per file (weak TSVs; for a
    strong TSV the distinct labels of each file's events), `files` (every usable filename, first-seen
    order, with or without events) and the `problems` of the rows left out."""
    events: list[Event] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def events_by_file(self) -> dict[str, list[Event]]:
        """{filename: its events in row order} for every file of `files` (an empty list for one without)."""
        grouped: dict[str, list[Event]] = {name: [] for name in self.files}
        for event in self.events:
            grouped.setdefault(event.filename, []).append(event)
        return grouped


def problem_summary(problems: Sequence[Problem]) -> dict:
    """The report.json part for `problems`: their count, the count of each kind, and every one in full."""
    return {"problems": len(problems), "problems_by_kind": dict(Counter(p.kind for p in problems)),
            "problem_rows": [p.as_dict() for p in problems]}


# ---------------------------------------------------------------- reading

def _rows(path: Path, columns: tuple[str, ...], shown: str, problems: list):
    """(line number, cells, a function that records that row's `Problem`) per non-blank UTF-8 data line;
    a line that is not UTF-8 is recorded in `problems` and skipped.

    The header must be exactly `columns` (whitespace and case ignored); else `InputError` naming the file."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except FileNotFoundError:
        raise InputError(f"{shown}: no such file") from None
    except OSError as error:
        raise InputError(f"{shown}: unreadable: {error.strerror or error}") from None
    header = lines[0].rstrip(b"\r").decode("utf-8", errors="replace").lstrip("\ufeff")
    found = tuple(cell.strip().lower() for cell in header.split("\t"))
    if found != columns:
        raise InputError(f"{shown}: header {header[:120]!r}; expected the tab-separated columns "
                         f"{', '.join(columns)}")
    for number, raw in enumerate(lines[1:], start=2):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue  # a blank line (the file's last newline) is no row
        def refuse(kind: str, detail: str, name: str = "", number: int = number) -> None:
            problems.append(Problem(shown, number, name, kind, detail))

        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            refuse("not UTF-8", f"the row {raw.decode('utf-8', errors='replace')[:60]!r} is not UTF-8 text")
            continue
        cells = [cell.strip() for cell in text.split("\t")]
        while len(cells) > len(columns) and not cells[-1]:
            cells.pop()  # trailing tabs are no cells
        yield number, cells, refuse


def _listing(folder: Path) -> set[str]:
    """Every file under `folder`, as a `/`-separated path relative to it (links included, hidden files not)."""
    found = set()
    for parent, folders, files in os.walk(folder):
        base = Path(parent).relative_to(folder)
        for name in files + [d for d in folders if os.path.islink(os.path.join(parent, d))]:
            if not name.startswith("."):
                found.add((base / name).as_posix())
    return found


def filename_problem(name: str, folder: Path | None, present: set[str] | None) -> tuple[str, str] | None:
    """(kind, detail) when `name` cannot be a file of `folder`, else None. Without a folder any non-empty
    name without a NUL passes (prepare's own events.tsv names manifest paths)."""
    if not name:
        return "empty filename", "the row names no file"
    if "\0" in name:
        return "bad filename", f"{name!r} holds a NUL character"
    if folder is None:
        return None
    parts = re.split(r"[\\/]", name)  # a Windows separator climbs out on Windows: refused everywhere
    if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
        return "outside the audio folder", f"filename {name!r} leaves {folder}"
    if present is not None and PurePosixPath(name).as_posix() not in present:
        return "missing file", f"{name!r} is not in {folder}"
    return None


def _time(cell: str, what: str) -> tuple[float | None, tuple[str, str] | None]:
    """(seconds, None) or (None, (kind, detail))."""
    try:
        value = float(cell)
    except ValueError:
        return None, ("not a number", f"{what} {cell!r} is not a number")
    if not math.isfinite(value):
        return None, ("not finite", f"{what} {cell} is not a finite number")
    if value < 0:
        return None, ("negative time", f"{what} {cell} s is before the start of the file")
    return value, None


def _reading(path: str | Path, folder: str | Path | None, classes: Sequence[str] | None, shown: str | None):
    """What a TSV reader checks rows against: (how messages name the TSV, the audio folder, the names
    in it (None: filenames taken as written), the allowed labels (None: any))."""
    folder = Path(folder) if folder is not None else None
    present = _listing(folder) if folder is not None and folder.is_dir() else (set() if folder else None)
    return shown or str(path), folder, present, set(classes) if classes is not None else None


def read_strong(path: str | Path, *, classes: Sequence[str] | None = None, folder: str | Path | None = None,
                shown: str | None = None) -> Annotations:
    """The events of a strong TSV, every bad row skipped with its `Problem`.

    `classes`: the allowed labels (None: any non-empty label). `folder`: the audio folder the
    filenames are relative to; a filename that is absolute, climbs out (`..`) or is not a file
    there is refused (None: filenames are taken as written). `shown`: how messages name the TSV
    (default: its path). A row is refused for: a number of cells other than 4, a line that is not
    UTF-8, an empty or outside or missing filename, an onset or offset that is not a number, not
    finite or negative, an onset not before its offset, an empty or unknown label, and an exact
    repeat of an earlier row. A file named with three blank cells has no event, which is no problem.
    """
    shown, folder, present, allowed = _reading(path, folder, classes, shown)
    result, seen, files = Annotations(), {}, {}
    for number, cells, refuse in _rows(Path(path), STRONG_COLUMNS, shown, result.problems):
        name = cells[0]
        if len(cells) == 1 or (len(cells) == 4 and not any(cells[1:])):  # a file without events
            wrong = filename_problem(name, folder, present)
            if wrong:
                refuse(*wrong, name)
            elif name not in files:
                files[name] = True
            continue
        if len(cells) != 4:
            refuse("wrong number of cells", f"{len(cells)} tab-separated cells, expected 4 "
                                            f"({', '.join(STRONG_COLUMNS)})", name)
            continue
        wrong = filename_problem(name, folder, present)
        if wrong:
            refuse(*wrong, name)
            continue
        onset, wrong = _time(cells[1], "onset")
        if wrong:
            refuse(*wrong, name)
            continue
        offset, wrong = _time(cells[2], "offset")
        if wrong:
            refuse(*wrong, name)
            continue
        if onset >= offset:
            kind = "onset after offset" if onset > offset else "empty event"
            refuse(kind, f"onset {cells[1]} s is not before offset {cells[2]} s", name)
            continue
        label = cells[3]
        if not label:
            refuse("empty label", "the event_label cell is blank", name)
            continue
        if allowed is not None and label not in allowed:
            refuse("unknown label", f"event_label {label!r} is not a class", name)
            continue
        key = (name, onset, offset, label)
        if key in seen:
            refuse("duplicate", f"the same event as row {seen[key]}", name)
            continue
        seen[key] = number
        files.setdefault(name, True)
        result.events.append(Event(name, onset, offset, label, shown, number))
    result.files = list(files)
    for name in result.files:
        result.labels[name] = []
    for event in result.events:
        if event.label not in result.labels[event.filename]:
            result.labels[event.filename].append(event.label)
    return result


def read_weak(path: str | Path, *, classes: Sequence[str] | None = None, folder: str | Path | None = None,
              shown: str | None = None) -> Annotations:
    """The clip labels of a weak TSV (`filename, event_labels`), every bad row skipped with its `Problem`.

    A row is refused for: a number of cells other than 2, a line that is not UTF-8, an empty,
    outside or missing filename (as in `read_strong`), an empty label list, a label outside
    `classes` (the whole row: a misspelt class would leave the clip a wrong negative), and a
    filename listed twice (the later row)."""
    shown, folder, present, allowed = _reading(path, folder, classes, shown)
    result, first = Annotations(), {}
    for number, cells, refuse in _rows(Path(path), WEAK_COLUMNS, shown, result.problems):
        name = cells[0]
        if len(cells) != 2:
            refuse("wrong number of cells", f"{len(cells)} tab-separated cells, expected 2 "
                                            f"({', '.join(WEAK_COLUMNS)})", name)
            continue
        wrong = filename_problem(name, folder, present)
        if wrong:
            refuse(*wrong, name)
            continue
        labels = list(dict.fromkeys(x.strip() for x in cells[1].split(WEAK_SEPARATOR) if x.strip()))
        if not labels:
            refuse("empty label", "the event_labels cell holds no label", name)
            continue
        unknown = [x for x in labels if allowed is not None and x not in allowed]
        if unknown:
            refuse("unknown label", f"event_labels holds {unknown[0]!r}, not a class"
                   + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""), name)
            continue
        if name in first:
            refuse("duplicate", f"the file is already listed in row {first[name]}", name)
            continue
        first[name] = number
        result.files.append(name)
        result.labels[name] = labels
    return result


def fit_to_duration(events: Iterable[Event], duration: float) -> tuple[list[Event], list[Problem]]:
    """`events` of one file of `duration` seconds: an event that starts at or after the end is dropped,
    one that ends after it is cut at the end; each change is a `Problem` (SKIPPED or CLIPPED)."""
    kept, problems = [], []
    for event in events:
        if event.onset >= duration:
            problems.append(Problem(event.source, event.row, event.filename, "past the end",
                                    f"onset {event.onset:g} s is at or after the file's end ({duration:g} s)"))
        elif event.offset > duration:
            problems.append(Problem(event.source, event.row, event.filename, "past the end",
                                    f"offset {event.offset:g} s is after the file's end ({duration:g} s); "
                                    f"cut to {duration:g} s", CLIPPED))
            kept.append(Event(event.filename, event.onset, duration, event.label, event.source, event.row))
        else:
            kept.append(event)
    return kept, problems


# ---------------------------------------------------------------- writing

def format_time(seconds: float) -> str:
    """Seconds as the TSV writes them: up to 9 decimals, no trailing zeros (`1.5`, `0.0000625`)."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def write_strong(path: str | Path, events: Iterable[Event]) -> Path:
    """`events` as a strong DCASE TSV at `path`, atomically (`atomic.write_text`); a filename or label
    holding a tab or a line break cannot be written and raises `ValueError` naming it."""
    lines = ["\t".join(STRONG_COLUMNS)]
    for event in events:
        for text in (event.filename, event.label):
            if any(c in text for c in "\t\r\n"):
                raise ValueError(f"{path}: {text!r} holds a tab or a line break; a TSV cell cannot")
        lines.append(f"{event.filename}\t{format_time(event.onset)}\t{format_time(event.offset)}\t{event.label}")
    return atomic.write_text(path, "\n".join(lines) + "\n")


def read_prepared_events(prepared: str | Path) -> dict[str, list[Event]]:
    """`<prepared>/events.tsv` (written by prepare for data with strong labels) as {manifest path: events}.
    Only the clips with strong labels appear (a weak clip has no timed events); `{}` when there is no file."""
    path = Path(prepared) / EVENTS_FILE
    if not path.exists():
        return {}
    annotations = read_strong(path)
    if annotations.problems:
        raise InputError(f"{annotations.problems[0].line()}; run the prepare stage again")
    return annotations.events_by_file()


# ---------------------------------------------------------------- frame targets

def output_frame_seconds(hop_length: int, sr: int, time_stride: int = 1) -> float:
    """Seconds per model output frame: the CQT hop times the network's time stride, over the sample rate."""
    return hop_length * time_stride / sr


def frame_span(onset: float, offset: float, frame_seconds: float, n_frames: int) -> tuple[int, int]:
    """The frames [first, stop) an event [onset, offset) marks (the rule in the module's docstring),
    clamped to [0, n_frames): first = floor(onset/h), stop = ceil(offset/h); an empty span when none."""
    if not frame_seconds > 0:
        raise ValueError(f"frame_seconds={frame_seconds}: must be a positive number of seconds")
    def snapped(frames: float) -> float:  # on a boundary when within the tolerance of one
        return float(round(frames)) if abs(frames - round(frames)) <= BOUNDARY_TOLERANCE else frames

    first, stop = math.floor(snapped(onset / frame_seconds)), math.ceil(snapped(offset / frame_seconds))
    if offset > onset:
        stop = max(stop, first + 1)  # an event shorter than the tolerance still marks its frame
    first, stop = max(0, first), min(n_frames, stop)
    return (first, stop) if first < stop else (first, first)


def frame_targets(events: Iterable[Event | Mapping], n_frames: int, frame_seconds: float,
                  classes: Sequence[str]) -> np.ndarray:
    """(n_frames, n_classes) float32 of 0/1: 1 where an event of that class marks the frame.

    `events` are `Event`s or mappings with `onset`, `offset` (seconds) and `label` (a class of
    `classes`, else `ValueError`); frame i covers [i·frame_seconds, (i+1)·frame_seconds) and an
    event marks frames floor(onset/h) .. ceil(offset/h) - 1 (module docstring); overlapping events
    of one class simply mark the union; frames past `n_frames` are dropped."""
    if n_frames < 0:
        raise ValueError(f"n_frames={n_frames}: must be >= 0")
    column = {name: index for index, name in enumerate(classes)}
    targets = np.zeros((n_frames, len(classes)), dtype=np.float32)
    for event in events:
        onset, offset, label = ((event.onset, event.offset, event.label) if isinstance(event, Event)
                                else (float(event["onset"]), float(event["offset"]), event["label"]))
        if label not in column:
            raise ValueError(f"event label {label!r} is not one of the {len(classes)} classes")
        first, stop = frame_span(onset, offset, frame_seconds, n_frames)
        targets[first:stop, column[label]] = 1.0
    return targets
