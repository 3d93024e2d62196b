"""Speech Commands v2 (`data=speechcommands`): 105,829 one-second utterances of 35 words (Warden 2018).

Layout (the TensorFlow archive, no top folder): `<word>/<speaker>_nohash_<n>.wav`,
`validation_list.txt`, `testing_list.txt` (paths relative to the root) and
`_background_noise_/` (long noise recordings for augmentation: not a class, not listed).
Official split: files in `testing_list.txt` are test, in `validation_list.txt` val, the rest
train (the lists are made by hashing the speaker, so no speaker spans two splits). The group is
the speaker. `data.classes` picks a subset of words (e.g. the ten command words).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from audiocnn.data.download import dataset_root
from audiocnn.data.settings import ClassNames, DatasetCopy

BACKGROUND = "_background_noise_"
HASH_DIVIDER = "_nohash_"

PUBLISHED_SPLIT = True  # the published lists already keep each speaker in one split


def _listed(root: Path, name: str) -> set[str]:
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"data.root={root}: no {name} (expected the Speech Commands v2 layout)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


class Settings(DatasetCopy):
    """`data=speechcommands`: Speech Commands v0.02 (`root`, or downloaded); `classes`: a subset of its words."""
    name: Literal["speechcommands"] = "speechcommands"
    classes: ClassNames | None = None


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = dataset_root(data, raw_root)
    test, val = _listed(root, "testing_list.txt"), _listed(root, "validation_list.txt")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != BACKGROUND and not p.name.startswith("."))
    classes = list(data.classes or words)
    clips = []
    for word in words:
        for path in sorted((root / word).glob("*.wav")):
            relative = f"{word}/{path.name}"
            split = "test" if relative in test else "val" if relative in val else "train"
            clips.append({"path": str(path), "label": word, "group": path.name.split(HASH_DIVIDER)[0],
                          "split": split, "fold": ""})
    if data.classes:  # a subset: other words are not part of the task, not bad input
        clips = [clip for clip in clips if clip["label"] in classes]
    return clips, classes
