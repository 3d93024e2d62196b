"""Free Spoken Digit Dataset (`data=fsdd`): 8 kHz recordings named `{digit}_{speaker}_{index}.wav`.

Official split: index 0-4 test, 5-49 train. Validation is carved out of train as index
5-9 (every speaker and digit, never a test recording). The group and the fold are the
speaker, so `data.fold=<speaker>` / `data.protocol=cv` is leave-one-speaker-out (validation:
the other speakers' recordings 5-9). `data.root` points at an existing copy (its `recordings/`
folder or the folder above); without it the release in `data.download` is fetched into `paths.raw`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from audiocnn.data.download import dataset_root
from audiocnn.data.settings import DatasetCopy, PositiveInt

CLASSES = [str(digit) for digit in range(10)]
NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<index>\d+)\.wav$")

# Its official split is by recording index, so every speaker is in every split by design:
# prepare checks it for identical files, not for speakers spanning splits.
PUBLISHED_SPLIT = True


def official_split(index: int) -> str:
    if index < 5:
        return "test"
    return "val" if index < 10 else "train"


class Settings(DatasetCopy):
    """`data=fsdd`: the Free Spoken Digit Dataset (`root`, or downloaded)."""
    name: Literal["fsdd"] = "fsdd"
    sr: PositiveInt = 8000


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    """List the recordings under `data.root` with their official split."""
    root = dataset_root(data, raw_root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    clips = []
    for path in sorted(folder.glob("*.wav")):
        match = NAME.match(path.name)
        if not match:  # not an FSDD recording: reported by prepare as a label outside the class list
            clips.append({"path": str(path), "label": path.stem, "group": "unknown", "fold": ""})
            continue
        clips.append({"path": str(path), "label": match["digit"], "group": match["speaker"],
                      "fold": match["speaker"], "split": official_split(int(match["index"]))})
    if not clips:
        raise FileNotFoundError(f"data.root={root}: no .wav recordings in {folder}")
    return clips, CLASSES
