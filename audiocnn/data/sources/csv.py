"""Your own recordings listed in a CSV file (`data=csv data.csv=<file.csv>`).

Columns: `path,label` and optionally `split` (train/val/test, for every row: if any cell is blank,
prepare makes the whole split itself),
`fold` and `group`. Relative paths are resolved against the CSV's folder, so a dataset folder
with its CSV can move as a whole. Classes are `data.classes` (a label outside it is skipped and
reported) or the sorted distinct labels. Without a `group` column the group comes from
`data.group_regex` on the file name (else each file is its own group). A row that cannot be
used (blank path or label, a split that is not train/val/test) is reported, not fatal.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audiocnn.data.sources._common import compile_group_regex, group_from_name, normalize_split

REQUIRED = ("path", "label")


def collect(data_cfg, raw_root: Path) -> tuple[list[dict], list[str]]:
    table_path = Path(data_cfg.csv)
    table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"data.csv={table_path}: missing column(s) {missing}; found {list(table.columns)}")
    base = table_path.resolve().parent
    pattern = compile_group_regex(data_cfg)
    clips = []
    for line, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        raw_path, label = row["path"].strip(), row["label"].strip()
        path = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
        clip = {"path": str(path), "label": label, "fold": row.get("fold", "").strip(),
                "group": row.get("group", "").strip() or group_from_name(path.name, pattern)}
        if not raw_path or not label:
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
    labels = sorted({c["label"] for c in clips if "skip" not in c})
    return clips, list(data_cfg.get("classes") or labels)
