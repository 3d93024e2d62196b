"""UrbanSound8K (`data=urbansound8k`): 8,732 urban sound excerpts (<= 4 s), 10 classes (Salamon 2014).

Layout (the Zenodo archive, `UrbanSound8K/`): `metadata/UrbanSound8K.csv` with columns
`slice_file_name,fsID,start,end,salience,fold,classID,class` and `audio/fold1..10/<slice_file_name>`.
Official protocol: 10-fold cross-validation on the predefined folds (never reshuffle: slices of
one Freesound recording share a fold), so `clip["fold"]` is "1".."10" and the group is `fsID`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audiocnn.data.download import dataset_root

METADATA = Path("metadata") / "UrbanSound8K.csv"


def collect(data_cfg, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = dataset_root(data_cfg, raw_root)
    if not (root / METADATA).is_file():
        raise FileNotFoundError(f"data.root={root}: no {METADATA} (expected the UrbanSound8K layout)")
    meta = pd.read_csv(root / METADATA, dtype=str, keep_default_na=False)
    order = meta.assign(classID=meta["classID"].astype(int)).drop_duplicates("classID").sort_values("classID")
    classes = order["class"].tolist()
    clips = []
    for row in meta.to_dict("records"):
        fold = str(int(row["fold"]))
        clips.append({"path": str(root / "audio" / f"fold{fold}" / row["slice_file_name"]), "label": row["class"],
                      "group": f"fs-{row['fsID']}", "fold": fold})
    return clips, classes
