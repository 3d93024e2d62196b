"""Every setting is checked before any work: `validate_config(cfg)` reads the composed config into typed
settings (`audiocnn.settings.read_settings`: each group with its schema, then the groups together) and
checks what the machine must offer (the devices asked for, the tracking store); it raises `ConfigError`
naming the first bad setting and returns the `Settings`.

`checks` holds the checks across groups and of the machine: the model against the front-end's window
(the blocks' shapes, its cost, one forward pass of the model built), a GPU for `accelerator=gpu`;
`tracking_uri` the `tracking` group's schema and whether MLflow can open or create the store it names.
Every schema uses `errors.SETTINGS_CONFIG`: strict (a bool is no number, `3.0` no integer), NaN and inf
refused, unknown keys refused, frozen; `errors.parse_settings` says the first problem in one line,
`<dotted key>=<value>: <what is allowed>`, e.g. `optimizer.lr=nan: must be a finite number`. Hydra
structured configs were not chosen: OmegaConf accepts NaN and inf for a float field, knows no ranges,
and reports a type error in several lines that do not say what is allowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from audiocnn.validation.checks import validate_hardware
from audiocnn.validation.tracking_uri import validate_tracking

if TYPE_CHECKING:
    from audiocnn.settings import Settings


def validate_config(cfg: DictConfig) -> Settings:
    """`cfg` as typed settings, checked before any work (`ConfigError` naming the first bad setting)."""
    from audiocnn.settings import read_settings

    settings = read_settings(cfg)
    validate_hardware(settings.features, settings.trainer)
    validate_tracking(settings.tracking)
    return settings
