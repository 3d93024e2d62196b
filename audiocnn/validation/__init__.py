"""Every setting is checked before any work: `validate_config(cfg)` raises `ConfigError` naming the first bad one.

Each config group is read as its schema, a pydantic model next to the code it configures:

| group | schema |
|---|---|
| top-level `seed`, `paths`, `ensemble`, `lock_timeout_s` | `RunSettings` (here) |
| `data` | one model per source (`data.sources.parse_data`: keys, ranges, the keys checked together, the folder, file and regex it names) |
| `features` | `features.settings.FeatureSettings` (ceilings, the top bin below Nyquist, the front-end's costs, which every model file's settings meet too) |
| `trainer` | `training.settings.TrainerSettings` (the devices and strategies the stage supports, the callbacks, SWA's arguments) |
| `optimizer`, `scheduler` | `training.optim.OptimizerSettings`, `SchedulerSettings` (every other key an argument of the `_target_`) |
| `model` (with `model.norm`) | `models.settings.CNNSettings` / `CRNNSettings`, by `model._target_` (model files are read with it too) |
| `augment` | `training.augment.AugmentSettings` (each transform's settings and limits) |
| `evaluate` | `evaluation.settings.EvaluateSettings` |
| `serving` | `inference.requests.Limits` |
| `tracking` | `tracking_uri.TrackingSettings`, and its store (`tracking_uri.validate_tracking`: one MLflow can open or create) |

`checks` holds what needs several groups or the machine: the model against the front-end's window (the
blocks' shapes, its cost, one forward pass), a GPU for `accelerator=gpu`. Every schema uses
`errors.SETTINGS_CONFIG`: strict (a bool is no number, `3.0` no integer), NaN and inf refused, unknown
keys refused, frozen; `errors.parse_settings` says the first problem in one line, `<dotted key>=<value>:
<what is allowed>`, e.g. `optimizer.lr=nan: must be a finite number`. Hydra structured configs were not
chosen: OmegaConf accepts NaN and inf for a float field, knows no ranges, and reports a type error in
several lines that do not say what is allowed.
"""

from __future__ import annotations

from typing import Annotated

from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, Field, PlainValidator

from audiocnn.data.settings import Seed, Text
from audiocnn.errors import SETTINGS_CONFIG, parse_settings
from audiocnn.validation.checks import validate_hardware, validate_model
from audiocnn.validation.tracking_uri import validate_tracking


def _member(value):
    """An ensemble member: a run id, model URI or folder; Hydra reads an all-digit one as an integer."""
    if (type(value) is int and value >= 0) or (isinstance(value, str) and value.strip()):
        return str(value)
    raise ValueError("must be an MLflow run id, a model URI or a model folder")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


Folder = Annotated[Text, AfterValidator(_not_blank)]


class PathsSettings(BaseModel):
    """`paths.*`: where each stage's outputs go (conf/config.yaml)."""
    model_config = SETTINGS_CONFIG
    raw: Folder
    prepared: Folder
    features: Folder
    models: Folder
    metrics: Folder


class RunSettings(BaseModel):
    """The top-level keys that are no group: the seed, the folders, the ensemble's members and how long a
    stage waits for another's writer lock."""
    model_config = {**SETTINGS_CONFIG, "extra": "ignore"}  # the groups: their own schemas
    seed: Seed
    paths: PathsSettings
    ensemble: list[Annotated[str, PlainValidator(_member)]] = []
    lock_timeout_s: Annotated[float, Field(ge=0)] = 300.0


def _group(cfg: DictConfig, name: str):
    """`cfg[name]` as plain Python (None when absent)."""
    value = cfg.get(name)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def validate_config(cfg: DictConfig) -> None:
    """Read every group of `cfg` as its schema and check them together; raise `ConfigError` naming the
    first bad setting."""
    from audiocnn.data.prepare import prepare_settings
    from audiocnn.evaluation.settings import evaluate_settings
    from audiocnn.features.settings import feature_settings
    from audiocnn.inference.requests import validate_serving
    from audiocnn.training.augment import augment_settings
    from audiocnn.training.optim import optimizer_settings, scheduler_settings
    from audiocnn.training.settings import trainer_settings

    parse_settings(RunSettings, {k: _group(cfg, k) for k in ("seed", "paths", "ensemble", "lock_timeout_s")
                                 if k in cfg}, "")
    trainer_settings(_group(cfg, "trainer"))
    features = feature_settings(cfg)
    validate_hardware(cfg)
    optimizer_settings(_group(cfg, "optimizer"))
    scheduler_settings(_group(cfg, "scheduler"))
    validate_model(_group(cfg, "model"), features)
    augment_settings(_group(cfg, "augment"), features)
    evaluate_settings(cfg)
    validate_serving(cfg)
    prepare_settings(cfg)
    validate_tracking(cfg)
