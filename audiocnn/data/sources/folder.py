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

from audiocnn.data.sources._common import audio_files, compile_group_regex, group_from_name


def collect(data_cfg, raw_root: Path) -> tuple[list[dict], list[str]]:
    root = Path(data_cfg.root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"data.root={root}: no class sub-folders in it")
    classes = list(data_cfg.get("classes") or folders)
    pattern = compile_group_regex(data_cfg)
    clips = [{"path": str(path), "label": label, "group": group_from_name(path.name, pattern), "fold": ""}
             for label in folders if label in classes for path in audio_files(root / label)]
    return clips, classes
