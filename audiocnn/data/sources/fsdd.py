"""Free Spoken Digit Dataset (`data=fsdd`): 8 kHz recordings named `{digit}_{speaker}_{index}.wav`.

Official split: index 0-4 test, 5-49 train. Validation is carved out of train as index
5-9 (every speaker and digit, never a test recording). The group and the fold are the
speaker, so `data.fold=<speaker>` is leave-one-speaker-out (validation: the other
speakers' recordings 5-9).
`data.root` points at an existing copy (its `recordings/` folder or the folder above).
"""

from __future__ import annotations

import re
from pathlib import Path

CLASSES = [str(digit) for digit in range(10)]
NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<index>\d+)\.wav$")


def official_split(index: int) -> str:
    if index < 5:
        return "test"
    return "val" if index < 10 else "train"


def collect(data_cfg, raw_root: Path) -> tuple[list[dict], list[str]]:
    """List the recordings under `data_cfg.root` with their official split."""
    root = Path(data_cfg.root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    clips = []
    for path in sorted(folder.glob("*.wav")):
        match = NAME.match(path.name)
        if not match:  # not an FSDD recording: reported by prepare as a label outside the class list
            clips.append({"path": str(path), "label": path.stem, "group": "unknown"})
            continue
        clips.append({"path": str(path), "label": match["digit"], "group": match["speaker"],
                      "fold": match["speaker"], "split": official_split(int(match["index"]))})
    if not clips:
        raise FileNotFoundError(f"data.root={data_cfg.root}: no .wav recordings in {folder}")
    return clips, CLASSES
