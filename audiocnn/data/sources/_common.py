"""Helpers shared by the dataset sources: file names -> groups, split names, audio files in a folder,
the label lists of multi-label clips."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from audiocnn.errors import ConfigError

# Spellings of split names found in dataset metadata and user CSVs.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test", "eval": "test", "evaluation": "test"}


def normalize_split(value) -> str | None:
    """`"Validation"` -> `"val"`; None for a blank cell; raises `ValueError` for anything else."""
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "nan", "none"):
        return None
    if text not in SPLIT_ALIASES:
        raise ValueError(f"split {value!r} is not one of train/val/test")
    return SPLIT_ALIASES[text]


def group_from_name(name: str, pattern: re.Pattern | None) -> str:
    """The group of a file: the regex's named group `group` (or group 1) on its name; else its stem.

    `data.group_regex='^(?P<group>[a-z]+)_'` makes every file of one speaker one group.
    """
    if pattern is not None:
        match = pattern.search(name)
        if match:
            return match.group("group") if "group" in pattern.groupindex else match.group(1)
    return Path(name).stem


def compile_group_regex(source: str | None) -> re.Pattern | None:
    """`data.group_regex` compiled (None when unset; `data.settings.GroupRegex` checked it)."""
    return re.compile(source) if source else None


def audio_files(folder: Path) -> list[tuple[Path, str]]:
    """Entries under `folder` (recursively) that claim to be files, sorted, each with "" or the
    reason it cannot be used.

    Hidden files (.DS_Store, ._x) are not audio. A broken link, a link loop or a folder named like
    a file (`x.wav/`) is listed on purpose, so prepare reports it instead of silently missing it;
    so is a sub-folder that cannot be listed (permission denied, a path longer than the system
    allows), with `unreadable folder: <why>`, so the run goes on without its files and says so.
    Links to folders are listed, not entered (no loops).
    """
    found: list[tuple[Path, str]] = []

    def unreadable(error: OSError) -> None:
        found.append((Path(error.filename or folder), f"unreadable folder: {error.strerror or error}"))

    for parent, folders, files in os.walk(folder, onerror=unreadable):
        for name in files + [d for d in folders if Path(d).suffix or os.path.islink(os.path.join(parent, d))]:
            if not name.startswith("."):
                found.append((Path(parent) / name, ""))
    return sorted(found)


def read_metadata(root: Path, relative: Path, layout: str) -> pd.DataFrame:
    """A dataset's metadata CSV (every cell a string); a clear error when `root` is not that layout."""
    if not (root / relative).is_file():
        raise FileNotFoundError(f"data.root={root}: no {relative} (expected the {layout} layout)")
    return pd.read_csv(root / relative, dtype=str, keep_default_na=False)


def classes_by_id(meta: pd.DataFrame, id_column: str, name_column: str) -> list[str]:
    """Class names ordered by the dataset's own integer class id."""
    order = meta.assign(**{id_column: meta[id_column].astype(int)}).drop_duplicates(id_column)
    return order.sort_values(id_column)[name_column].tolist()


# Between the labels of one clip in a CSV's `labels` column and in the manifest's.
LABEL_SEPARATOR = ";"


def split_labels(cell, separator: str = LABEL_SEPARATOR) -> list[str]:
    """`"dog; siren;"` -> `["dog", "siren"]`: blank items dropped, order kept, a repeated label once."""
    return list(dict.fromkeys(item.strip() for item in str(cell).split(separator) if item.strip()))


def check_label_names(classes, where: str) -> None:
    """Raise `ConfigError` naming `where` when a class name holds `LABEL_SEPARATOR` (the manifest's
    `labels` cell could not be read back)."""
    for index, name in enumerate(classes):
        if LABEL_SEPARATOR in str(name):
            raise ConfigError(f"{where}: class {name!r} (#{index}) holds {LABEL_SEPARATOR!r}, the separator of "
                              "the labels column; rename it")
