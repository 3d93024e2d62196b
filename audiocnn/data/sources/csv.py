"""Your own recordings listed in a CSV file (`data=csv data.csv=<file.csv>`).

Columns: `path` and either `label` (one class per clip) or `labels` (multi-label: several
classes, `;`-separated, e.g. `car;speech`), and optionally `split` (train/val/test, for every
row: if any cell is blank, prepare makes the whole split itself), `fold` and `group`. Relative
paths are resolved against the CSV's folder, so a dataset folder with its CSV can move as a whole.
Classes are `data.classes` (a label outside it is skipped and reported) or the sorted distinct
labels. Without a `group` column the group comes from `data.group_regex` on the file name (else
each file is its own group). A row that cannot be used (blank path or label, a split that is not
train/val/test) is reported, not fatal; so is a multi-label row with an empty label list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import model_validator

from audiocnn.errors import ConfigError, show
from audiocnn.data.sources._common import (check_label_names, compile_group_regex, group_from_name,
                                           normalize_split, split_labels)
from audiocnn.data.settings import ClassNames, DataSettings, GroupRegex, Text


class Settings(DataSettings):
    """`data=csv`: a CSV listing `path,label` (or `labels`)[,split,fold,group]."""
    name: Literal["csv"] = "csv"
    csv: Text | None = None
    classes: ClassNames | None = None
    group_regex: GroupRegex | None = None

    @model_validator(mode="after")
    def _listing(self):
        if self.csv is None or not Path(self.csv).is_file():
            raise ValueError(f"data.csv={show(self.csv)}: no such file; give the CSV listing "
                             "path,label (or labels)[,split,fold,group]")
        return self


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    table_path = Path(data.csv)
    table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    table.columns = [c.strip().lower() for c in table.columns]
    if "label" in table.columns and "labels" in table.columns:
        raise ConfigError(f"data.csv={table_path}: both a label and a labels column; keep one (label: one class "
                          "per clip; labels: several, ';'-separated)")
    multilabel = "labels" in table.columns
    missing = [c for c in ("path", "labels" if multilabel else "label") if c not in table.columns]
    if missing:
        raise ConfigError(f"data.csv={table_path}: missing column(s) {missing}; found {list(table.columns)}")
    base = table_path.resolve().parent
    pattern = compile_group_regex(data.group_regex)
    clips = []
    for line, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        raw_path = row["path"].strip()
        path = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
        clip = {"path": str(path), "fold": row.get("fold", "").strip(),
                "group": row.get("group", "").strip() or group_from_name(path.name, pattern)}
        if multilabel:
            clip["labels"] = split_labels(row["labels"])
            blank = not raw_path
        else:
            clip["label"] = row["label"].strip()
            blank = not raw_path or not clip["label"]
        if blank:
            clip.update(path=raw_path or f"{table_path}:{line}", skip=f"row {line}: blank path or label")
        else:
            try:
                split = normalize_split(row.get("split"))
            except ValueError as error:
                clip["skip"] = f"row {line}: {error}"
            else:
                if split:
                    clip["split"] = split
        clips.append(clip)
    usable = [c for c in clips if "skip" not in c]
    labels = sorted({name for c in usable for name in c["labels"]} if multilabel else {c["label"] for c in usable})
    classes = list(data.classes or labels)
    if multilabel:
        check_label_names(classes, "data.classes" if data.classes else f"data.csv={table_path}")
    return clips, classes
