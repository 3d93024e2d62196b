"""The `model` config group (conf/model/, with conf/norm/'s `model.norm`) as typed settings.

One pydantic model per model class, picked by `model._target_` (`model_settings`): `CNNSettings`
(`models.cnn.CNN`) and `CRNNSettings` (`models.crnn.CRNN`), on `ModelSettings`, the keys both have:
the conv blocks (each a `blocks.BlockSpec`), dropout, the input normalisation (`NormSettings`: one
model per `model.norm.type`), transfer learning (`init_from`, `freeze`) and the events task's time
stride. Types, ranges and allowed values are checked here, and what depends on the front-end
(`window_problem`: one input normalisation, the blocks' shapes on the window). The `model` group
(`audiocnn.validation.checks.validate_model`) and a model file's `model` mapping (`models.bundle`) are
read with the same schema and the same checks; the model classes take them as read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from audiocnn.data.settings import Positive, PositiveInt, Text, UnitOpen
from audiocnn.errors import SETTINGS_CONFIG, ConfigError, ShapeError, parse_settings, show
from audiocnn.models.blocks import BlockSpec, trace_shapes
from audiocnn.models.cnn import GLOBAL_POOLS
from audiocnn.models.crnn import CLIP_OUTPUTS, RNNS, TEMPORAL_POOLS
from audiocnn.models.event_pool import EVENT_POOLS
from audiocnn.models.freq_pool import FREQ_POOLS

MAX_ITEMS = 64  # blocks, head_hidden, num_layers: each is a module to build (`models.budget`)
FREEZE_OPTIONS = ("none", "backbone")  # model.freeze: `training.transfer.freeze`


class NoNorm(BaseModel):
    model_config = SETTINGS_CONFIG
    type: Literal["none"] = "none"


class PCENSettings(BaseModel):
    """`model.norm.type=pcen` (conf/norm/pcen.yaml says what each key does; `models.norm.PCEN`)."""
    model_config = SETTINGS_CONFIG
    type: Literal["pcen"]
    alpha: UnitOpen = 0.98
    delta: Positive = 2.0
    r: UnitOpen = 0.5
    s: UnitOpen = 0.04
    eps: Positive = 1e-6
    trainable: bool = False


class BinNormSettings(BaseModel):
    """`model.norm.type=bin_norm` (`models.norm.BinNorm`)."""
    model_config = SETTINGS_CONFIG
    type: Literal["bin_norm"]
    min_std: Positive = 0.1


NORMS = {"none": NoNorm, "pcen": PCENSettings, "bin_norm": BinNormSettings}
NormSettings = NoNorm | PCENSettings | BinNormSettings


def norm_settings(values) -> NormSettings:
    """`model.norm` (a mapping with `type`; None: none) as its type's settings; `ConfigError` naming the
    first bad key."""
    values = {"type": "none"} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"model.norm={show(values)}: must be a mapping with type: none, pcen or bin_norm "
                          "(choose norm=none|pcen|bin_norm)")
    if values.get("type") not in NORMS:
        raise ConfigError(f"model.norm.type={show(values.get('type'))}: allowed: {', '.join(NORMS)}")
    return parse_settings(NORMS[values["type"]], values, "model.norm")


class ModelSettings(BaseModel):
    """The keys of every model class. `blocks` stay mappings (what model.pt stores); each is read as a
    `BlockSpec` here."""
    model_config = {**SETTINGS_CONFIG, "populate_by_name": True}

    target: str = Field(alias="_target_")
    name: Text | None = None  # conf/model/'s options all have one
    blocks: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)]
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.3
    norm: NormSettings = NoNorm()
    init_from: Text | None = None
    freeze: Literal[FREEZE_OPTIONS] = "none"
    event_time_stride: PositiveInt | None = None  # the events task's cap on the blocks' time pooling

    @model_validator(mode="before")
    @classmethod
    def _norm(cls, values):
        if isinstance(values, dict) and "norm" in values:
            values = {**values, "norm": norm_settings(values["norm"])}
        return values

    @model_validator(mode="after")
    def _blocks(self) -> "ModelSettings":
        if not self.blocks:
            raise ValueError("{where}.blocks: empty; a model needs at least one conv block")
        for index, block in enumerate(self.blocks):
            try:
                BlockSpec.from_config(block)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{{where}}.blocks[{index}]: {error}") from None
        return self

    @property
    def specs(self) -> list[BlockSpec]:
        return [BlockSpec.from_config(block) for block in self.blocks]

    def config(self) -> dict:
        """The settings as plain values, keys as written in conf/ (what model.pt stores and `build_model`
        instantiates)."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class CNNSettings(ModelSettings):
    """`models.cnn.CNN`: conv blocks, a global pooling, a fully connected head."""
    target: Literal["audiocnn.models.cnn.CNN"] = Field(alias="_target_")
    global_pool: Literal[GLOBAL_POOLS] = "catavgmax"
    grid_size: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = [4, 4]
    head_hidden: Annotated[list[PositiveInt], Field(max_length=MAX_ITEMS)] = []


class CRNNSettings(ModelSettings):
    """`models.crnn.CRNN`: conv blocks, a frequency pooling, a recurrent layer over time, a temporal
    pooling (and an event pooling for the events task)."""
    target: Literal["audiocnn.models.crnn.CRNN"] = Field(alias="_target_")
    rnn: Literal[tuple(RNNS)] = "gru"
    hidden_size: PositiveInt = 128
    num_layers: Annotated[int, Field(ge=1, le=MAX_ITEMS)] = 1
    bidirectional: bool = True
    temporal_pool: Literal[TEMPORAL_POOLS] = "mean"
    freq_pool: Literal[FREQ_POOLS] = "flatten"
    event_pool: Literal[EVENT_POOLS] = "linear_softmax"
    clip_output: Literal[CLIP_OUTPUTS] = "head"


MODEL_SCHEMAS = {"audiocnn.models.cnn.CNN": CNNSettings, "audiocnn.models.crnn.CRNN": CRNNSettings}


def model_settings(values, where: str = "model") -> CNNSettings | CRNNSettings:
    """The `model` group (plain values) as its class's settings; `ConfigError` naming the first bad key."""
    target = (values or {}).get("_target_") if isinstance(values, dict) else None
    if target not in MODEL_SCHEMAS:
        raise ConfigError(f"{where}._target_={show(target)}: not an audiocnn model; allowed: "
                          f"{', '.join(MODEL_SCHEMAS)} (choose a config from conf/model/)")
    return parse_settings(MODEL_SCHEMAS[target], values, where)


def window_problem(model: ModelSettings, n_bins: int, window_frames: int, top_db: float | None) -> str | None:
    """Why `model` cannot take the front-end's windows `(n_bins, window_frames)`, in one line naming the
    setting, or None: a `model.norm` beside `features.top_db` (peak normalisation of PCEN or of
    standardised bins means nothing), a conv stack that shrinks the window to nothing."""
    if model.norm.type != "none" and top_db is not None:
        return (f"model.norm.type={model.norm.type}: needs features.top_db=null (features.top_db={top_db:g}): "
                "choose one input normalisation")
    try:
        trace_shapes(model.specs, (n_bins, window_frames))
    except ShapeError as error:
        return f"{error} (input {n_bins} bins x {window_frames} frames)"
    return None
