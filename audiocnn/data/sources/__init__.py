"""Dataset sources: one module per dataset, each with `collect(data_cfg, raw_root)`.

`collect` returns `(clips, classes)`: clips are dicts with at least `path`, `label` and
`group` (plus `split`/`fold` where the dataset has official ones); classes is the label
list in index order. `data=<name>` selects `audiocnn.data.sources.<name>`.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from pathlib import Path

from omegaconf import DictConfig

SOURCES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def collect(data_cfg: DictConfig, raw_root: Path) -> tuple[list[dict], list[str]]:
    """Run the `data_cfg.name` source's `collect` (files under `raw_root` if it makes any)."""
    module = import_module(f"{__name__}.{data_cfg.name}")
    return module.collect(data_cfg, Path(raw_root))
