"""The prepare stage: source -> `manifest.csv`, `classes.json`, `report.json`, `settings.json`.

manifest.csv has one row per usable clip: `path,label,split,fold,group,duration,sr`.
Every file is probed; unusable ones are listed in report.json with their reason and the
run goes on. Only an empty split stops it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from audiocnn import atomic
from audiocnn.config import ConfigError
from audiocnn.data import sources
from audiocnn.data.audio import probe_audio
from audiocnn.data.splits import SPLITS, grouped_stratified_split

MANIFEST_COLUMNS = ["path", "label", "split", "fold", "group", "duration", "sr"]


class EmptySplitError(RuntimeError):
    """A split has no usable clip, so training or evaluation would be meaningless."""


def _display_path(path: str) -> str:
    """Paths under the working directory are stored relative to it (portable across clones)."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return absolute if relative.startswith("..") else relative


def probe_clips(clips: list[dict], classes: list[str]) -> tuple[list[dict], list[dict]]:
    """Split `clips` into usable rows (with duration and sr) and skipped `{path, reason}` records."""
    kept, skipped, seen = [], [], set()
    for clip in clips:
        path = _display_path(str(clip["path"]))
        if path in seen:
            skipped.append({"path": path, "reason": "duplicate path"})
            continue
        seen.add(path)
        if clip["label"] not in classes:
            skipped.append({"path": path, "reason": f"label {clip['label']!r} is not in the class list"})
            continue
        try:
            info = probe_audio(path)
        except Exception as error:  # noqa: BLE001 - any decoder failure is a reason to skip, not to stop
            skipped.append({"path": path, "reason": f"unreadable: {str(error).splitlines()[0]}"})
            continue
        kept.append({**clip, "path": path, "duration": round(info.duration, 4), "sr": info.sr})
    return kept, skipped


def assign_splits(frame: pd.DataFrame, data_cfg: DictConfig, seed: int) -> pd.DataFrame:
    """Official splits where the source gave them, else stratified + grouped; `data.fold` picks a test fold."""
    frame["fold"] = frame["fold"].fillna("").astype(str) if "fold" in frame else ""
    if data_cfg.get("fold") is not None:
        return _fold_splits(frame, str(data_cfg.fold), data_cfg, seed)
    if "split" not in frame or frame["split"].isna().any():
        frame["split"] = grouped_stratified_split(
            frame["label"], frame["group"], val_fraction=data_cfg.val_fraction,
            test_fraction=data_cfg.test_fraction, seed=seed,
        )
    return frame


def fold_values(frame: pd.DataFrame) -> list[str]:
    """The distinct non-empty folds of a manifest, in natural order ("2" before "10")."""
    folds = set(frame["fold"].fillna("").astype(str)) - {""}
    return sorted(folds, key=lambda f: (0, int(f), "") if f.isdigit() else (1, 0, f))


def _fold_splits(frame: pd.DataFrame, fold: str, data_cfg: DictConfig, seed: int) -> pd.DataFrame:
    """Fold `fold` is the test split. The other folds keep the source's own validation rows when
    it has an official split (FSDD: recordings 5-9), else give a grouped stratified `val_fraction`."""
    available = fold_values(frame)
    if fold not in available:
        raise ConfigError(f"data.fold={fold}: data={data_cfg.name} has folds {available or 'none'}")
    test = (frame["fold"] == fold).to_numpy()
    rest = frame.loc[~test]
    if "split" in frame and frame["split"].notna().all():
        rest_split = np.where(rest["split"] == "val", "val", "train")
    else:
        rest_split = grouped_stratified_split(rest["label"], rest["group"], val_fraction=data_cfg.val_fraction,
                                              test_fraction=0.0, seed=seed).to_numpy()
    split = np.full(len(frame), "test", dtype=object)
    split[~test] = rest_split
    frame["split"] = split
    return frame


def data_settings(cfg: DictConfig) -> dict:
    """What the manifest depends on: the `data` config and the seed."""
    return {"data": OmegaConf.to_container(cfg.data, resolve=True), "seed": cfg.seed}


def is_prepared(cfg: DictConfig) -> bool:
    """True when `paths.prepared` holds a manifest made from these data settings."""
    settings = Path(cfg.paths.prepared) / "settings.json"
    return (Path(cfg.paths.prepared) / "manifest.csv").exists() and settings.exists() and \
        json.loads(settings.read_text()) == data_settings(cfg)


def prepare(cfg: DictConfig) -> pd.DataFrame:
    """Build `paths.prepared`/{manifest.csv, classes.json, report.json} for `cfg.data`."""
    out = Path(cfg.paths.prepared)
    Path(cfg.paths.raw).mkdir(parents=True, exist_ok=True)
    clips, classes = sources.collect(cfg.data, Path(cfg.paths.raw))
    kept, skipped = probe_clips(clips, classes)
    # The manifest columns are there even when no clip is usable, so that case ends in EmptySplitError.
    columns = sorted({k for c in kept for k in c} | {"path", "label", "group", "duration", "sr"})
    frame = assign_splits(pd.DataFrame(kept, columns=columns), cfg.data, cfg.seed)
    frame = frame[MANIFEST_COLUMNS].reset_index(drop=True)

    counts = frame["split"].value_counts()
    report = {
        "data": cfg.data.name,
        "kept": len(frame),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s["reason"].split(":")[0] for s in skipped)),
        "splits": {split: int(counts.get(split, 0)) for split in SPLITS},
        "skipped_files": skipped,
    }
    atomic.write_json(out / "report.json", report)
    empty = [split for split in SPLITS if counts.get(split, 0) == 0]
    if empty:
        raise EmptySplitError(
            f"split {empty[0]!r} is empty after skipping {len(skipped)} unusable files "
            f"(see {out / 'report.json'}); add data or change data.val_fraction / data.test_fraction"
        )
    atomic.write_json(out / "classes.json", list(classes))
    with atomic.atomic_path(out / "manifest.csv") as tmp:
        frame.to_csv(tmp, index=False)
    atomic.write_json(out / "settings.json", data_settings(cfg))
    reasons = ", ".join(f"{n} {r}" for r, n in report["skipped_by_reason"].items()) or "none"
    print(f"prepare: kept {len(frame)} clips ({', '.join(f'{s} {n}' for s, n in report['splits'].items())}); "
          f"skipped {len(skipped)} ({reasons})")
    return frame
