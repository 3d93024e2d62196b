"""Dataset sources: one module per dataset, each with `collect(data_cfg, raw_root)`.

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

from omegaconf import DictConfig

from audiocnn.errors import ConfigError

SOURCES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def validate(data_cfg: DictConfig) -> None:
    """Raise `ConfigError` for a data setting that cannot work (before any file is touched)."""
    import re

    from audiocnn.data.sources._common import compile_group_regex

    name = data_cfg.name
    root = data_cfg.get("root")
    if root is not None and not Path(root).exists():
        raise ConfigError(f"data.root={root}: no such folder; point it at your copy of {name}")
    if root is not None and not Path(root).is_dir():
        raise ConfigError(f"data.root={root}: not a folder; point it at your copy of {name}")
    if root is not None and Path(root).resolve() == Path(root).resolve().parent:  # prepare would read every file
        raise ConfigError(f"data.root={root}: the root of the filesystem; point it at your copy of {name}")
    if "root" in data_cfg and root is None and not (data_cfg.get("download") or {}).get("url"):
        raise ConfigError(f"data.root=null: data={name} cannot be downloaded; set data.root to your copy")
    if "csv" in data_cfg and (data_cfg.csv is None or not Path(data_cfg.csv).is_file()):
        raise ConfigError(f"data.csv={data_cfg.csv}: no such file; give the CSV listing path,label (or labels)[,split,fold,group]")
    try:
        compile_group_regex(data_cfg)
    except re.error as error:
        raise ConfigError(f"data.group_regex={data_cfg.get('group_regex')}: {error}") from None
    if "split_scheme" in data_cfg and data_cfg.split_scheme not in ("fault_filtered", "random"):
        raise ConfigError(f"data.split_scheme={data_cfg.split_scheme}: allowed: fault_filtered, random")
    limit = data_cfg.get("max_seconds")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError(f"data.max_seconds={limit}: must be a positive number of seconds or null (no limit)")


def publishes_split(name: str) -> bool:
    """True for a dataset whose split is published and used as is (its module sets PUBLISHED_SPLIT)."""
    return bool(getattr(import_module(f"{__name__}.{name}"), "PUBLISHED_SPLIT", False))


def collect(data_cfg: DictConfig, raw_root: Path) -> tuple[list[dict], list[str]]:
    """Run the `data_cfg.name` source's `collect` (files under `raw_root` if it makes any)."""
    clips, classes, _ = collect_annotated(data_cfg, raw_root)
    return clips, classes


def collect_annotated(data_cfg: DictConfig, raw_root: Path) -> tuple[list[dict], list[str], list]:
    """`collect`, plus the annotation problems of a source with event annotations (`[]` for the others)."""
    module = import_module(f"{__name__}.{data_cfg.name}")
    result = module.collect(data_cfg, Path(raw_root))
    return (*result, []) if len(result) == 2 else tuple(result)
