"""GTZAN genre collection (`data=gtzan`): 1,000 thirty-second excerpts, 10 genres (Tzanetakis 2002).

Layout: `<genre>/<genre>.000NN.{wav,au}` under `genres_original/` (the Kaggle copy), `genres/`
(the original archive) or directly under `data.root`. Two protocols, `data.split_scheme`:

* `fault_filtered` (default): the artist-filtered split of Kereliuk, Sturm & Larsen (2015,
  "Deep learning and music adversaries"), 443 train / 197 valid / 290 test excerpts, no artist
  in two splits, the 70 excerpts with repetitions, distortions or mislabels left out (they are
  recorded in report.json as skipped). File lists in `_gtzan_split/{train,valid,test}.txt`, as
  published in coreyker/dnn-mgr (`*_filtered.txt`) and jordipons/sklearn-audio-transfer-learning,
  and shipped in torchaudio.datasets.GTZAN (`filtered_train/valid/test`).
* `random`: all 1,000 excerpts, stratified random split (data.val_fraction / data.test_fraction);
  known to overestimate accuracy, because artists repeat across splits (Sturm 2013).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

from audiocnn.data.download import dataset_root
from audiocnn.data.settings import DatasetCopy

GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
NAME = re.compile(r"^(?P<genre>[a-z]+)\.(?P<number>\d{5})\.[A-Za-z0-9]+$")
SPLIT_FILES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}

PUBLISHED_SPLIT = True  # the fault-filtered lists are used as published (groups are excerpts)


def fault_filtered_split() -> dict[str, str]:
    """{"blues.00029": "train", ...} for the 930 excerpts of the artist-filtered split."""
    folder = resources.files(__package__) / "_gtzan_split"
    return {name: split for split, file in SPLIT_FILES.items()
            for name in (folder / file).read_text().split()}


def genre_folder(root: Path) -> Path:
    for candidate in (root / "genres_original", root / "genres", root):
        if (candidate / "blues").is_dir():
            return candidate
    raise FileNotFoundError(f"data.root={root}: no genre folders (blues/, classical/, ...) in it, "
                            f"its genres_original/ or its genres/")


class Settings(DatasetCopy):
    """`data=gtzan`: GTZAN (`root`, or downloaded); `split_scheme`: the fault-filtered split or a random one."""
    name: Literal["gtzan"] = "gtzan"
    split_scheme: Literal["fault_filtered", "random"] = "fault_filtered"


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    scheme = data.split_scheme
    folder = genre_folder(dataset_root(data, raw_root))
    official = fault_filtered_split() if scheme == "fault_filtered" else None
    clips = []
    for genre in GENRES:
        for path in sorted((folder / genre).glob(f"{genre}.*")):
            match = NAME.match(path.name)
            if not match:
                continue
            excerpt = f"{match['genre']}.{match['number']}"
            clip = {"path": str(path), "label": genre, "group": excerpt, "fold": ""}
            if official is not None:
                if excerpt not in official:
                    clip["skip"] = "not in the fault-filtered split (repeated, distorted or mislabelled excerpt)"
                else:
                    clip["split"] = official[excerpt]
            clips.append(clip)
    return clips, GENRES
