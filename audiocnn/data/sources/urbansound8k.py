"""UrbanSound8K (`data=urbansound8k`): 8,732 urban sound excerpts (<= 4 s), 10 classes (Salamon 2014).

Layout (the Zenodo archive, `UrbanSound8K/`): `metadata/UrbanSound8K.csv` with columns
`slice_file_name,fsID,start,end,salience,fold,classID,class` and `audio/fold1..10/<slice_file_name>`.
Official protocol: 10-fold cross-validation on the predefined folds (never reshuffle: slices of
one Freesound recording share a fold), so `clip["fold"]` is "1".."10" and the group is `fsID`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from audiocnn.data.download import dataset_root
from audiocnn.data.sources._common import classes_by_id, read_metadata
from audiocnn.data.settings import DatasetCopy

METADATA = Path("metadata") / "UrbanSound8K.csv"


class Settings(DatasetCopy):
    """`data=urbansound8k`: UrbanSound8K (`root`, or downloaded); its ten folds."""
    name: Literal["urbansound8k"] = "urbansound8k"


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = dataset_root(data, raw_root)
    meta = read_metadata(root, METADATA, "UrbanSound8K")
    classes = classes_by_id(meta, "classID", "class")
    clips = []
    for row in meta.to_dict("records"):
        fold = str(int(row["fold"]))
        clips.append({"path": str(root / "audio" / f"fold{fold}" / row["slice_file_name"]), "label": row["class"],
                      "group": f"fs-{row['fsID']}", "fold": fold})
    return clips, classes
