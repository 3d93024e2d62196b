"""The prepare stage: source -> `manifest.csv`, `classes.json`, `report.json`, `settings.json`.

manifest.csv has one row per usable clip: `path,label,split,fold,group,duration,sr`; its text
cells are CSV-escaped (`audiocnn.data.names.csv_cell`: a label like `=cmd` is written `'=cmd`),
and `read_manifest` reads them back unescaped. report.json's `names` maps
every class and fold to the slug used for it in paths and metric keys.
Multi-label data (a source whose clips carry `labels`, a list: `data=csv` with a `labels` column,
`data=fsd50k`, `data=demo_mix`) adds a `labels` column after `label`: the clip's labels in class
order, `;`-separated; its `label` is the first of them. Its classes.json is
`{"task": "multilabel", "classes": [...]}` instead of the plain list, and report.json says
`"task": "multilabel"`; `read_classes` reads either. Single-label output is unchanged.
Data with event annotations (a source whose clips carry `annotation`: `data=demo_events`,
`data=desed`) is the `events` task: multi-label data (`labels`: a clip's weak labels) with an `annotation` column
after `labels` (`strong`: timed events, `weak`: clip labels only), and `events.tsv` beside the
manifest: every event of the kept strong clips, a DCASE strong TSV whose `filename` is the clip's
manifest `path` (`data.events.read_prepared_events`). Events past a file's end are cut there (or
dropped when they start at or after it); report.json's `annotations` counts the clips and events
and lists every annotation row left out or changed, with its reason (`data.events.Problem`). Its
classes.json is `{"task": "events", "classes": [...]}` (report.json: `"task": "events"`).
Every file is probed; unusable ones are listed in report.json with their reason and the
run goes on. Only an empty split stops it. One writer at a time: prepare holds the lock of
`paths.prepared` (`atomic.folder_lock`) while it writes; a second prepare of the same
folder waits up to `lock_timeout_s`, then writes its own manifest (the last one wins).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from audiocnn import atomic
from audiocnn.errors import ConfigError, EmptySplitError, LeakageError, MissingInputError, Unusable
from audiocnn.data import sources
from audiocnn.data.checks import check_leakage, inspect_file, merge_duplicate_groups
from audiocnn.data.download import dataset_root
from audiocnn.data.events import EVENTS_FILE, Event, fit_to_duration, problem_summary, write_strong
from audiocnn.data.settings import DEFAULT_MAX_SECONDS, DataSettings, DatasetCopy
from audiocnn.data.names import TEXT_COLUMNS, escape_columns, slug_map, unescape_columns
from audiocnn.data.sources._common import LABEL_SEPARATOR
from audiocnn.data.splits import SPLITS, stratified_split, val_group_splits
from audiocnn.data.task import EVENTS, MULTICLASS, MULTILABEL, TASKS  # one class per clip | several | timed events
from audiocnn.errors import InputError

MANIFEST_COLUMNS = ["path", "label", "split", "fold", "group", "duration", "sr"]


@dataclass(frozen=True)
class PrepareSettings:
    """The prepare stage's input: the `data` group (its source's settings), the `seed` that draws the
    splits, `raw` (`paths.raw`: downloads and generated data), `prepared` (`paths.prepared`: the
    manifest) and how long to wait for another process preparing the same folder."""
    data: DataSettings
    seed: int
    raw: Path
    prepared: Path
    lock_timeout_s: float = 300.0


def _display_path(path: str) -> str:
    """Paths under the working directory are stored relative to it (portable across clones)."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return absolute if relative.startswith("..") else relative


def probe_clips(clips: list[dict], classes: list[str], max_seconds: float | None = DEFAULT_MAX_SECONDS
                ) -> tuple[list[dict], list[dict]]:
    """Split `clips` into usable rows and skipped `{path, reason}` records.

    A usable row gains `duration`, `sr`, `channels`, `md5` and `note` (why a kept file deserves
    a look, or ""). A reason reads `<category>: <detail>`; a clip the source already ruled out
    carries its reason in `skip`. A multi-label clip (its `labels`, a list) is skipped when the list
    is empty or holds a label outside `classes`; its labels are put in class order and its `label`
    is the first of them. A clip with `events` has them fitted to its duration (`events.fit_to_duration`;
    the changes in its `event_problems`) and, when strong, its labels made those of its events; a
    strong clip whose annotation says it has no event (a row of blank cells) is kept with no label (`labels`
    [], `label` ""): a true negative of every class; one whose events all fall past its end is skipped
    (`no events`: its annotation does not fit the file).
    """
    kept, skipped, seen = [], [], set()
    position = {name: index for index, name in enumerate(classes)}
    for clip in clips:
        path = _display_path(str(clip["path"]))
        if clip.get("skip"):
            skipped.append({"path": path, "reason": clip["skip"]})
            continue
        if path in seen:
            skipped.append({"path": path, "reason": "duplicate path: listed more than once"})
            continue
        seen.add(path)
        if "annotation" in clip and any(c in path for c in "\t\r\n"):
            skipped.append({"path": path, "reason": "bad path: it holds a tab or a line break, which events.tsv "
                                                    "cannot hold"})
            continue
        event_free = clip.get("annotation") == "strong" and not clip["labels"] and not clip.get("events")
        if event_free:
            clip = {**clip, "labels": [], "label": ""}
        elif "labels" in clip:
            unknown = [name for name in clip["labels"] if name not in position]
            if not clip["labels"] or unknown:
                reason = (f"label not in the class list: {unknown[0]!r}" + (f" (+{len(unknown) - 1} more)"
                          if len(unknown) > 1 else "")) if unknown else "empty label list: the clip has no label"
                skipped.append({"path": path, "reason": reason})
                continue
            labels = sorted(clip["labels"], key=position.__getitem__)
            clip = {**clip, "labels": labels, "label": labels[0]}
        elif clip["label"] not in position:
            skipped.append({"path": path, "reason": f"label not in the class list: {clip['label']!r}"})
            continue
        try:
            facts = inspect_file(path, max_seconds)
        except Unusable as error:
            skipped.append({"path": path, "reason": str(error)})
            continue
        except OSError as error:  # one file the system will not read never stops the run
            skipped.append({"path": path, "reason": f"unreadable: {error.strerror or error}"})
            continue
        if "events" in clip:
            events, problems = fit_to_duration(clip["events"], facts.duration)
            clip = {**clip, "events": events, "event_problems": problems}
            if clip.get("annotation") == "strong":
                labels = sorted({event.label for event in events}, key=position.__getitem__)
                if not labels and not event_free:
                    skipped.append({"path": path, "reason": "no events: every event starts at or after the "
                                                            f"file's end ({facts.duration:g} s)",
                                    "event_problems": problems})
                    continue
                clip = {**clip, "labels": labels, "label": labels[0] if labels else ""}
        kept.append({**clip, "path": path, "duration": round(facts.duration, 4), "sr": facts.sr,
                     "channels": facts.channels, "md5": facts.md5, "note": facts.note})
    return kept, skipped


def assign_splits(frame: pd.DataFrame, data: DataSettings, seed: int) -> pd.DataFrame:
    """Official splits where the source gave them, else stratified + grouped; `data.fold` picks a test fold.

    `data.val_groups` (a list of groups, or a number of them drawn with `seed` from the groups
    outside the test split) replaces the validation split by those groups' clips; the other
    clips outside the test split train."""
    frame["fold"] = frame["fold"].fillna("").astype(str) if "fold" in frame else ""
    spec = data.val_groups
    given = "split" in frame and frame["split"].notna().all()
    if data.fold is not None:
        frame = _fold_splits(frame, str(data.fold), data, seed)
        test, source = (frame["split"] == "test").to_numpy(), f"data.fold={data.fold}"
    elif given:
        test, source = (frame["split"] == "test").to_numpy(), f"data={data.name}'s own split"
    elif spec is None:
        frame["split"] = stratified_split(frame, val_fraction=data.val_fraction,
                                          test_fraction=data.test_fraction, seed=seed)
    else:
        test, source = None, "made by prepare"
    if spec is not None:
        frame["split"] = val_group_splits(frame, test, spec if isinstance(spec, int) else list(spec),
                                          test_fraction=data.test_fraction, seed=seed, test_source=source)
    return frame


def fold_values(frame: pd.DataFrame) -> list[str]:
    """The distinct non-empty folds of a manifest, in natural order ("2" before "10")."""
    folds = set(frame["fold"].fillna("").astype(str)) - {""}
    # isascii: "²".isdigit() is true but int("²") fails; a fold name is data, never trusted
    return sorted(folds, key=lambda f: (0, int(f), "") if f.isascii() and f.isdigit() else (1, 0, f))


def _fold_splits(frame: pd.DataFrame, fold: str, data: DataSettings, seed: int) -> pd.DataFrame:
    """Fold `fold` is the test split. The other folds keep the source's own validation rows when
    it has an official split (FSDD: recordings 5-9), else give a grouped stratified `val_fraction`."""
    available = fold_values(frame)
    if fold not in available:
        raise ConfigError(f"data.fold={fold}: data={data.name} has folds {available or 'none'}")
    test = (frame["fold"] == fold).to_numpy()
    rest = frame.loc[~test]
    if "split" in frame and frame["split"].notna().all():
        rest_split = np.where(rest["split"] == "val", "val", "train")
    else:
        rest_split = stratified_split(rest, val_fraction=data.val_fraction, test_fraction=0.0, seed=seed).to_numpy()
    split = np.full(len(frame), "test", dtype=object)
    split[~test] = rest_split
    frame["split"] = split
    return frame


def manifest_settings(job: PrepareSettings) -> dict:
    """What the manifest depends on: the `data` settings and the seed (`<paths.prepared>/settings.json`)."""
    return {"data": job.data.model_dump(mode="json"), "seed": job.seed}


def is_prepared(job: PrepareSettings) -> bool:
    """True when `paths.prepared` holds a manifest made from these data settings."""
    settings = job.prepared / "settings.json"
    return (job.prepared / "manifest.csv").exists() and settings.exists() and \
        json.loads(settings.read_text()) == manifest_settings(job)


def read_manifest(prepared: str | Path) -> pd.DataFrame:
    """`<prepared>/manifest.csv` (`paths.prepared`), its text cells unescaped
    (`audiocnn.data.names.read_csv_cell`); a missing one is an error naming the prepare stage."""
    path = Path(prepared) / "manifest.csv"
    if not path.exists():
        raise MissingInputError(f"paths.prepared={prepared}: no manifest.csv; run the prepare stage first "
                                "(`dvc repro prepare` or `audiocnn prepare`)")
    return unescape_columns(pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str), keep_default_na=False))


def read_classes(prepared: str | Path) -> tuple[list[str], str]:
    """`<prepared>/classes.json` as (class names, task): `MULTICLASS` for a plain list, else its `task`
    (one of `data.task.TASKS`; another is refused in one line: a stage would otherwise train it as
    single-label data)."""
    path = Path(prepared) / "classes.json"
    classes = json.loads(path.read_text())
    if isinstance(classes, dict):
        task = classes.get("task")
        if task not in TASKS:
            raise InputError(f"{path}: task={str(task)[:40]!r}: allowed: {', '.join(TASKS)}; run the prepare "
                             "stage again")
        return list(classes["classes"]), task
    return classes, MULTICLASS


def prepare(job: PrepareSettings, classes_problem: Callable[[list], str | None] | None = None) -> pd.DataFrame:
    """Build `paths.prepared`/{manifest.csv, classes.json, report.json} for `job.data`, holding its lock.

    `classes_problem` (a higher layer passes `features.budget.classes_problem`) returns what is wrong
    with the class list, or None; a problem stops prepare before any file is probed (10,000 labels
    are refused in one line, not after hours of work)."""
    with atomic.folder_lock(job.prepared, job.lock_timeout_s, "lock_timeout_s", "prepare"):
        return _prepare(job, classes_problem)


def _prepare(job: PrepareSettings, classes_problem: Callable[[list], str | None] | None) -> pd.DataFrame:
    out, data = job.prepared, job.data
    job.raw.mkdir(parents=True, exist_ok=True)
    if isinstance(data, DatasetCopy) and data.download is not None:  # fetched first, waiting for another fetch
        dataset_root(data, job.raw, lock_timeout_s=job.lock_timeout_s)
    clips, classes, annotation_problems = sources.collect_annotated(data, job.raw)
    problem = classes_problem(list(classes)) if classes_problem else None
    if problem:
        raise ConfigError(f"data={data.name}: {problem}; keep fewer classes with data.classes")
    task = MULTILABEL if any("labels" in clip for clip in clips) else MULTICLASS
    kept, skipped = probe_clips(clips, classes, data.max_seconds)
    annotated = any("annotation" in clip for clip in clips)
    task = EVENTS if annotated else task  # event data: multi-label clips (weak labels) with timed events
    for row in kept + skipped:
        annotation_problems = annotation_problems + row.pop("event_problems", [])
    events = [Event(row["path"], e.onset, e.offset, e.label, e.source, e.row) for row in kept
              for e in row.pop("events", [])]
    # The manifest columns are there even when no clip is usable, so that case ends in EmptySplitError.
    columns = sorted({k for c in kept for k in c} | {"path", "label", "group", "fold", "duration", "sr", "md5"}
                     | ({"labels"} if task != MULTICLASS else set()) | ({"annotation"} if annotated else set()))
    frame = pd.DataFrame(kept, columns=columns)
    # Where prepare makes (part of) the split, every copy of one recording first joins one group,
    # so copies never straddle two splits.
    given = "split" in frame and frame["split"].notna().all()
    if (not given or data.fold is not None) and len(frame):
        frame["group"] = merge_duplicate_groups(frame)
    frame = assign_splits(frame, data, job.seed)
    # Identical files are checked in every split; groups in every split but those built on a
    # published split (FSDD's puts each speaker in every split by design, and with data.fold its
    # validation rows are the other speakers' recordings 5-9).
    leakage = None
    try:
        check_leakage(frame, check_groups=not (given and sources.publishes_split(data.name)))
    except LeakageError as error:
        leakage = error
    handled = [{"path": row["path"], "note": row["note"]} for row in kept if row["note"]]
    audio = {"sample_rates": dict(Counter(str(row["sr"]) for row in kept)),
             "channels": dict(Counter(str(row["channels"]) for row in kept))}
    manifest_columns = list(MANIFEST_COLUMNS)
    if task != MULTICLASS:
        frame["labels"] = frame["labels"].map(LABEL_SEPARATOR.join)
        manifest_columns.insert(manifest_columns.index("label") + 1, "labels")
    if annotated:
        manifest_columns.insert(manifest_columns.index("labels") + 1, "annotation")
    frame = frame[manifest_columns].reset_index(drop=True)
    # Names from the data become path components and metric keys only as slugs; an unresolvable
    # collision stops here, before any training.
    names = {"classes": slug_map(classes, "class"), "folds": slug_map(fold_values(frame), "fold")}

    counts = frame["split"].value_counts()
    report = {
        "data": data.name,
        **({"task": task} if task != MULTICLASS else {}),
        "kept": len(frame),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s["reason"].split(":")[0] for s in skipped)),
        "splits": {split: int(counts.get(split, 0)) for split in SPLITS},
        "audio": audio,
        "leakage": str(leakage) if leakage else None,
        "names": names,
        "skipped_files": skipped,
        "handled_files": handled,
    }
    if annotated:
        kinds = Counter(frame["annotation"])
        report["annotations"] = {"clips": {"strong": int(kinds.get("strong", 0)), "weak": int(kinds.get("weak", 0))},
                                 "events": len(events), "events_file": str(out / EVENTS_FILE),
                                 **problem_summary(annotation_problems)}
    atomic.write_json(out / "report.json", report)
    reasons = ", ".join(f"{n} {r}" for r, n in report["skipped_by_reason"].items()) or "none"
    print(f"prepare: kept {len(frame)} clips ({', '.join(f'{s} {n}' for s, n in report['splits'].items())}); "
          f"skipped {len(skipped)} ({reasons}); {len(handled)} kept with a note"
          + (f"; {len(events)} events, {len(annotation_problems)} annotation rows left out or cut" if annotated
             else "") + f"; details in {out / 'report.json'}")
    if leakage:
        raise leakage
    empty = [split for split in SPLITS if counts.get(split, 0) == 0]
    if empty:
        why = ("change data.val_fraction / data.test_fraction or add data" if not given
               else "the dataset's own split has no usable clip there")
        raise EmptySplitError(
            f"split {empty[0]!r} is empty after skipping {len(skipped)} unusable files "
            f"(see {out / 'report.json'}); {why}"
        )
    atomic.write_json(out / "classes.json", list(classes) if task == MULTICLASS
                      else {"task": task, "classes": list(classes)})
    if annotated:
        write_strong(out / EVENTS_FILE, events)
    else:
        (out / EVENTS_FILE).unlink(missing_ok=True)  # another dataset's, from an earlier prepare of this folder
    with atomic.atomic_path(out / "manifest.csv") as tmp:
        escape_columns(frame).to_csv(tmp, index=False)
    atomic.write_json(out / "settings.json", manifest_settings(job))
    return frame
