"""A job's composed config read into typed settings once: `read_settings(cfg) -> Settings`.

Each group is read with its schema, next to the code it configures (the table is in
docs/architecture.md, "Settings"); then the groups are checked together: the model against the
front-end's window (`validation.checks.validate_model`), the augmentations and the test-time views
against the front-end. The stages' typed inputs are built from `Settings` (`prepare`, `store`,
`loader`). `prepare_settings(cfg)` and `store_settings(cfg)` read only the groups their stage needs:
the prepare and featurize stages run alone under DVC and must not pay for importing the models,
Lightning or MLflow, which this module does not import at load time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, Field, PlainValidator

from audiocnn.data.prepare import PrepareSettings
from audiocnn.data.settings import DataSettings, Seed, Text
from audiocnn.errors import SETTINGS_CONFIG, parse_settings
from audiocnn.features.settings import FeatureSettings, StoreSettings

if TYPE_CHECKING:
    from audiocnn.evaluation.settings import EvaluateSettings
    from audiocnn.inference.requests import Limits
    from audiocnn.models.settings import CNNSettings, CRNNSettings
    from audiocnn.training.augment import AugmentSettings
    from audiocnn.training.datamodule import LoaderSettings
    from audiocnn.training.optim import OptimizerSettings, SchedulerSettings
    from audiocnn.training.settings import TrainerSettings
    from audiocnn.validation.tracking_uri import TrackingSettings


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


def group(cfg: DictConfig, name: str) -> Any:
    """`cfg[name]` as plain Python (None when absent)."""
    value = cfg.get(name)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_settings(cfg: DictConfig) -> RunSettings:
    """The top-level keys of `cfg` as `RunSettings`; `ConfigError` naming the first bad one."""
    return parse_settings(RunSettings, {k: group(cfg, k) for k in RunSettings.model_fields if k in cfg}, "")


def _prepare(data: DataSettings, run: RunSettings) -> PrepareSettings:
    return PrepareSettings(data, run.seed, Path(run.paths.raw), Path(run.paths.prepared), run.lock_timeout_s)


def _store(features: FeatureSettings, data: DataSettings, run: RunSettings) -> StoreSettings:
    return StoreSettings(features, data.name, Path(run.paths.prepared), Path(run.paths.features), run.lock_timeout_s)


def prepare_settings(cfg: DictConfig) -> PrepareSettings:
    """The prepare stage's input from `cfg` (its `data` group, `seed`, `paths`); `ConfigError` naming the
    first bad setting."""
    from audiocnn.data.sources import parse_data

    return _prepare(parse_data(group(cfg, "data")), run_settings(cfg))


def store_settings(cfg: DictConfig) -> StoreSettings:
    """The feature store `cfg` names (its `features` and `data` groups, `paths`); `ConfigError` naming
    the first bad setting."""
    from audiocnn.data.sources import parse_data
    from audiocnn.features.settings import feature_settings

    return _store(feature_settings(group(cfg, "features")), parse_data(group(cfg, "data")), run_settings(cfg))


@dataclass(frozen=True)
class Settings:
    """Every group of one job's composed config, typed and checked together (`read_settings`). `config`:
    the resolved config as plain Python (what a run logs as its params and fingerprints)."""
    run: RunSettings
    data: DataSettings
    features: FeatureSettings
    trainer: TrainerSettings
    optimizer: OptimizerSettings
    scheduler: SchedulerSettings
    model: CNNSettings | CRNNSettings
    augment: AugmentSettings
    evaluate: EvaluateSettings
    serving: Limits
    tracking: TrackingSettings
    config: dict

    def prepare(self) -> PrepareSettings:
        """The prepare stage's input (the manifest trained and tested on)."""
        return _prepare(self.data, self.run)

    def store(self) -> StoreSettings:
        """The feature store of this job's front-end and manifest."""
        return _store(self.features, self.data, self.run)

    def loader(self) -> LoaderSettings:
        """How the loaders batch windows (`trainer.batch_size`, `num_workers`, `sampler`) and `seed`."""
        from audiocnn.training.datamodule import LoaderSettings

        return LoaderSettings(self.trainer.batch_size, self.trainer.num_workers, self.trainer.sampler, self.run.seed)


def read_settings(cfg: DictConfig) -> Settings:
    """Every group of `cfg` read with its schema and checked together; `ConfigError` naming the first bad
    setting. The tracking store itself and the devices are checked by `validation.validate_config`."""
    from audiocnn.data.sources import parse_data
    from audiocnn.evaluation.settings import evaluate_settings
    from audiocnn.features.settings import feature_settings
    from audiocnn.inference.requests import Limits
    from audiocnn.training.augment import augment_settings
    from audiocnn.training.optim import optimizer_settings, scheduler_settings
    from audiocnn.training.settings import trainer_settings
    from audiocnn.validation.checks import validate_model
    from audiocnn.validation.tracking_uri import tracking_settings

    run = run_settings(cfg)
    trainer = trainer_settings(group(cfg, "trainer"))
    features = feature_settings(group(cfg, "features"))
    optimizer = optimizer_settings(group(cfg, "optimizer"))
    scheduler = scheduler_settings(group(cfg, "scheduler"))
    model = validate_model(group(cfg, "model"), features)
    augment = augment_settings(group(cfg, "augment"), features)
    evaluate = evaluate_settings(group(cfg, "evaluate"), features)
    serving = Limits.from_settings(group(cfg, "serving"))
    data = parse_data(group(cfg, "data"))
    tracking = tracking_settings(group(cfg, "tracking"))
    return Settings(run, data, features, trainer, optimizer, scheduler, model, augment, evaluate, serving, tracking,
                    OmegaConf.to_container(cfg, resolve=True))
