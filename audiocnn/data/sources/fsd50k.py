"""FSD50K (`data=fsd50k`): 51,197 Freesound clips, 200 classes of the AudioSet ontology, multi-label
(Fonseca et al. 2022, Zenodo record 4060432).

Layout (the extracted Zenodo archives under `data.root`):
`FSD50K.ground_truth/dev.csv` (`fname,labels,mids,split`, split train/val),
`FSD50K.ground_truth/eval.csv` (`fname,labels,mids`: the test split),
`FSD50K.ground_truth/vocabulary.csv` (`index,label,mid`, no header: the classes in index order),
`FSD50K.dev_audio/<fname>.wav`, `FSD50K.eval_audio/<fname>.wav`. A `labels` cell holds a clip's
labels comma-separated (quoted). A label outside vocabulary.csv or an empty cell skips that clip,
reported by prepare. Each clip is its own group. The audio comes as split zips (`.z01`...), which
must be joined (`zip -s 0`) and extracted by hand first: docs/datasets.md, FSD50K.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from audiocnn.errors import ConfigError, MissingInputError
from audiocnn.data.download import dataset_root
from audiocnn.data.sources._common import check_label_names, read_metadata, split_labels
from audiocnn.data.settings import DatasetCopy

GROUND_TRUTH = Path("FSD50K.ground_truth")
VOCABULARY = GROUND_TRUTH / "vocabulary.csv"
LISTS = {"dev": GROUND_TRUTH / "dev.csv", "eval": GROUND_TRUTH / "eval.csv"}
AUDIO = {"dev": Path("FSD50K.dev_audio"), "eval": Path("FSD50K.eval_audio")}
REQUIRED = {"dev": ("fname", "labels", "split"), "eval": ("fname", "labels")}
CELL_SEPARATOR = ","  # between the labels of one clip inside dev.csv's and eval.csv's `labels` cells


def vocabulary(root: Path) -> list[str]:
    """The class names of vocabulary.csv in its index order; a name that holds the cell separator
    (`,`) or the manifest's (`;`) is refused in one line naming the file."""
    table = pd.read_csv(root / VOCABULARY, header=None, names=["index", "label", "mid"], dtype=str,
                        keep_default_na=False)
    classes = table.assign(index=table["index"].astype(int)).sort_values("index")["label"].str.strip().tolist()
    for index, name in enumerate(classes):
        if CELL_SEPARATOR in name:
            raise ConfigError(f"data.root={root}: {VOCABULARY}: class {name!r} (#{index}) holds {CELL_SEPARATOR!r}, "
                              "the separator of the labels cells; its clips could not be read")
    check_label_names(classes, f"data.root={root}: {VOCABULARY}")
    return classes


class Settings(DatasetCopy):
    """`data=fsd50k`: an FSD50K copy (`root`); multi-label."""
    name: Literal["fsd50k"] = "fsd50k"


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = dataset_root(data, raw_root)
    for piece in (VOCABULARY, *LISTS.values(), *AUDIO.values()):
        if not (root / piece).exists():
            raise MissingInputError(f"data.root={root}: no {piece}; extract FSD50K's ground truth and its joined "
                                    "audio zips there (docs/datasets.md, FSD50K)")
    classes = vocabulary(root)
    clips = []
    for part, listing in LISTS.items():
        meta = read_metadata(root, listing, "FSD50K")
        missing = [c for c in REQUIRED[part] if c not in meta.columns]
        if missing:
            raise ConfigError(f"data.root={root}: {listing} has no column(s) {missing}; found {list(meta.columns)}")
        for line, row in enumerate(meta.to_dict("records"), start=2):  # line 1 is the header
            clip = {"path": str(root / AUDIO[part] / f"{row['fname']}.wav"), "group": f"fs-{row['fname']}",
                    "fold": "", "labels": split_labels(row["labels"], CELL_SEPARATOR)}
            split = "test" if part == "eval" else row["split"].strip().lower()
            if part == "eval" or split in ("train", "val"):
                clip["split"] = split
            else:
                clip["skip"] = f"{listing} row {line}: split {row['split']!r} is not train or val"
            clips.append(clip)
    return clips, classes
