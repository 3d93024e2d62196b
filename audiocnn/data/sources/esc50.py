"""ESC-50 (`data=esc50`): 2,000 five-second clips of 50 environmental sound classes (Piczak 2015).

Layout (the GitHub archive, `ESC-50-master/`): `meta/esc50.csv` with columns
`filename,fold,target,category,esc10,src_file,take` and `audio/<filename>`. Official protocol:
5-fold cross-validation on the `fold` column (fragments of one Freesound recording share a
fold), so `clip["fold"]` is "1".."5" and the group is the source recording (`src_file`).
`data.esc10=true` keeps the 10-class ESC-10 subset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from audiocnn.data.download import dataset_root
from audiocnn.data.sources._common import classes_by_id, read_metadata
from audiocnn.data.settings import DatasetCopy

METADATA = Path("meta") / "esc50.csv"


class Settings(DatasetCopy):
    """`data=esc50`: ESC-50 (`root`, or downloaded); `esc10`: its ESC-10 subset."""
    name: Literal["esc50"] = "esc50"
    esc10: bool = False


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = dataset_root(data, raw_root)
    meta = read_metadata(root, METADATA, "ESC-50 repository")
    if data.esc10:
        meta = meta[meta["esc10"].str.lower() == "true"]
    classes = classes_by_id(meta, "target", "category")
    clips = [{"path": str(root / "audio" / row.filename), "label": row.category, "group": f"src-{row.src_file}",
              "fold": str(int(row.fold))} for row in meta.itertuples()]
    return clips, classes
