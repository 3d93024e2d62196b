"""The `features` config group (conf/features/) as typed settings: the front-end a model holds
(`budget.FrontendSettings`, the same schema every model file's settings are checked with) and how the
featurize stage and the trainer compute it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from audiocnn.errors import SETTINGS_CONFIG, parse_settings
from audiocnn.features.budget import FrontendSettings


class FeatureSettings(FrontendSettings):
    """conf/features/*.yaml says what each key does."""
    model_config = SETTINGS_CONFIG  # unlike a model file's mapping, the group holds no other key

    batch_size: Annotated[int, Field(gt=0)]
    num_workers: Annotated[int, Field(ge=0)]
    shard_mb: Annotated[float, Field(gt=0)]
    verify: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    on_the_fly: bool = False
    trainable: bool = False

    @model_validator(mode="after")
    def _trainable_on_the_fly(self) -> "FeatureSettings":
        if self.trainable and not self.on_the_fly:
            raise ValueError("features.trainable=true: needs features.on_the_fly=true (stored frames are fixed)")
        return self


def feature_settings(values) -> FeatureSettings:
    """The `features` group (plain values) as `FeatureSettings`; `ConfigError` naming the first bad setting."""
    return parse_settings(FeatureSettings, values, "features")


@dataclass(frozen=True)
class StoreSettings:
    """One feature store, the featurize stage's input: what its frames are (`features`), the manifest
    they cover (`prepared`: `paths.prepared` of data `data_name`) and where stores live (`stores`:
    `paths.features`, one sub-folder per store). `lock_timeout_s`: how long featurize waits for
    another process writing the same store."""
    features: FeatureSettings
    data_name: str
    prepared: Path
    stores: Path
    lock_timeout_s: float = 300.0

