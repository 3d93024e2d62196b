"""Dataset sources: one module per dataset, each with its `Settings` (the `data` group's schema for it,
on `audiocnn.data.settings`' bases) and `collect(data, raw_root)`.

`collect` returns `(clips, classes)`: clips are dicts with at least `path`, `label` and
`group` (plus `split`/`fold` where the dataset has official ones); a multi-label source's clips
carry `labels` (a list, maybe empty: prepare reports it) instead of `label`; classes is the
label list in index order. `data=<name>` selects `audiocnn.data.sources.<name>`.
A source with event annotations (`demo_events`, `desed`) returns a third item, the
`data.events.Problem`s of the annotation rows it left out, and its clips carry `annotation`
(`strong`: timed events, maybe none; `weak`: clip labels only) and `events` (`data.events.Event`s,
times in seconds from the clip's start); `collect_annotated` gives all three for any source.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from pathlib import Path
from typing import Mapping

from audiocnn.data.settings import DataSettings
from audiocnn.errors import ConfigError, parse_settings, show

SOURCES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def parse_data(values: Mapping) -> DataSettings:
    """The `data` group (plain values) as its source's `Settings`; `ConfigError` naming the first bad setting."""
    name = values.get("name")
    if name not in SOURCES:
        raise ConfigError(f"data.name={show(name)}: allowed: {', '.join(SOURCES)}")
    return parse_settings(import_module(f"{__name__}.{name}").Settings, values, "data")


def publishes_split(name: str) -> bool:
    """True for a dataset whose split is published and used as is (its module sets PUBLISHED_SPLIT)."""
    return bool(getattr(import_module(f"{__name__}.{name}"), "PUBLISHED_SPLIT", False))


def collect(data: DataSettings, raw_root: Path) -> tuple[list[dict], list[str]]:
    """Run the `data.name` source's `collect` (files under `raw_root` if it makes any)."""
    clips, classes, _ = collect_annotated(data, raw_root)
    return clips, classes


def collect_annotated(data: DataSettings, raw_root: Path) -> tuple[list[dict], list[str], list]:
    """`collect`, plus the annotation problems of a source with event annotations (`[]` for the others)."""
    module = import_module(f"{__name__}.{data.name}")
    result = module.collect(data, Path(raw_root))
    return (*result, []) if len(result) == 2 else tuple(result)
