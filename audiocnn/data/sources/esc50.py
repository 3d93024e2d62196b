"""ESC-50 (`data=esc50`): 2,000 five-second clips of 50 environmental sound classes (Piczak 2015).

Layout (the GitHub archive, `ESC-50-master/`): `meta/esc50.csv` with columns
`filename,fold,target,category,esc10,src_file,take` and `audio/<filename>`. Official protocol:
5-fold cross-validation on the `fold` column (fragments of one Freesound recording share a
fold), so `clip["fold"]` is "1".."5" and the group is the source recording (`src_file`).
`data.esc10=true` keeps the 10-class ESC-10 subset.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audiocnn.data.download import dataset_root

METADATA = Path("meta") / "esc50.csv"


def collect(data_cfg, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = dataset_root(data_cfg, raw_root)
    if not (root / METADATA).is_file():
        raise FileNotFoundError(f"data.root={root}: no {METADATA} (expected the ESC-50 repository layout)")
    meta = pd.read_csv(root / METADATA, dtype=str, keep_default_na=False)
    if data_cfg.get("esc10"):
        meta = meta[meta["esc10"].str.lower() == "true"]
    order = meta.assign(target=meta["target"].astype(int)).drop_duplicates("target").sort_values("target")
    classes = order["category"].tolist()
    clips = [{"path": str(root / "audio" / row.filename), "label": row.category, "group": f"src-{row.src_file}",
              "fold": str(int(row.fold))} for row in meta.itertuples()]
    return clips, classes
