"""Your own recordings, one sub-folder per class (`data=folder data.root=<folder>`).

    <root>/<class>/<any name>.<wav|flac|ogg|mp3|...>     (sub-folders inside a class are searched too)

Classes are the sub-folder names in sorted order, or `data.classes` (an order, or a subset:
files of other folders are then left out). There is no official split: prepare makes a
stratified split grouped by `data.group_regex` on the file name (e.g. `^(?P<group>[^_]+)_` for
`<speaker>_<n>.wav`), so one speaker or session never spans two splits; without a regex every
file is its own group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from audiocnn.errors import ConfigError
from audiocnn.data.sources._common import audio_files, compile_group_regex, group_from_name
from audiocnn.data.settings import ClassNames, DatasetCopy, GroupRegex


class Settings(DatasetCopy):
    """`data=folder`: one sub-folder of `root` per class."""
    name: Literal["folder"] = "folder"
    classes: ClassNames | None = None
    group_regex: GroupRegex | None = None


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = Path(data.root)
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as error:
        raise ConfigError(f"data.root={root}: cannot list it ({error.strerror or error})") from None
    folders, unknown = [], []
    for entry in entries:
        try:
            if entry.is_dir():
                folders.append(entry.name)
        except OSError as error:  # cannot tell whether it is a class folder: reported, the run goes on
            unknown.append({"path": str(entry), "label": entry.name, "group": entry.name, "fold": "",
                            "skip": f"unreadable: {error.strerror or error}"})
    if not folders:
        raise ConfigError(f"data.root={root}: no class sub-folders in it")
    classes = list(data.classes or folders)
    pattern = compile_group_regex(data.group_regex)
    clips = [{"path": str(path), "label": label, "group": group_from_name(path.name, pattern), "fold": "",
              **({"skip": problem} if problem else {})}
             for label in folders if label in classes for path, problem in audio_files(root / label)]
    return clips + unknown, classes
