"""The `trainer` config group (conf/trainer/) as typed settings: `TrainerSettings`.

conf/trainer/default.yaml says what each key does. Checked here, once per job: each key's type and
range, Lightning's device and strategy settings the train stage supports, and `trainer.callbacks`:
each a dotted class path of an installed package (imported only when the trainer is built: importing
Lightning here would cost every stage seconds), Stochastic Weight Averaging's arguments, and SWA not
beside early stopping (training could stop before SWA averages anything).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainValidator, model_validator

from audiocnn.data.event_decoding import MAX_MEDIAN_FRAMES
from audiocnn.data.settings import Count, NonNegative, Positive, PositiveInt, Seed
from audiocnn.errors import SETTINGS_CONFIG, parse_settings, show
from audiocnn.training.optim import CLASS_WEIGHTS, PRECISIONS
from audiocnn.training.sampling import SAMPLERS

# Lightning strategies the train stage supports: ddp re-runs the command once per extra process
# (audiocnn.training.distributed); ddp_spawn would pickle the data module into its processes.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


def _distinct(items: list) -> list:
    if len(set(items)) != len(items):
        raise ValueError("must hold distinct items")
    return items


def _devices(value):
    """auto, N > 0 devices, -1 (all), Lightning's index string "0,1", or a list of device indices."""
    if value == "auto" or (type(value) is int and (value > 0 or value == -1)):
        return value
    if isinstance(value, str) and value.replace(",", "").replace(" ", "").isdigit():
        return value
    if isinstance(value, list) and value and all(type(v) is int and v >= 0 for v in value) \
            and len(set(value)) == len(value):
        return value
    raise ValueError("allowed: auto, a positive number of devices, -1 (all), or a list of device indices such as [0,1]")


def _precision(value):
    """One of `PRECISIONS`, compared as text (`trainer.precision=32` reads as an integer)."""
    if not isinstance(value, bool) and str(value) in PRECISIONS:
        return str(value)
    raise ValueError(f"allowed: {', '.join(PRECISIONS)}")


def _deterministic(value):
    if value in (True, False, "warn") and (isinstance(value, bool) or value == "warn"):
        return value
    raise ValueError("allowed: true, false, warn")


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be odd")
    return value


def _swa_epoch_start(value):
    if (type(value) is int and value >= 1) or (type(value) is float and 0 < value <= 1):
        return value
    raise ValueError("must be an epoch number >= 1 or a fraction in (0, 1]")


class SWAArguments(BaseModel):
    """The arguments of a `trainer.callbacks.<name>` of `StochasticWeightAveraging` (besides `_target_`;
    conf/trainer/callbacks/swa.yaml): Lightning checks them only when the trainer is built, after prepare
    and featurize."""
    model_config = SETTINGS_CONFIG

    swa_lrs: Positive
    swa_epoch_start: Annotated[int | float, PlainValidator(_swa_epoch_start)] = 0.8
    annealing_epochs: PositiveInt = 10
    annealing_strategy: Literal["cos", "linear"] = "cos"
    device: Annotated[str, Field(min_length=1)] | None = None


class TrainerSettings(BaseModel):
    """The `trainer` group (conf/trainer/default.yaml says what each key does)."""
    model_config = SETTINGS_CONFIG

    max_epochs: PositiveInt
    batch_size: PositiveInt
    num_workers: Count
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"]
    devices: Annotated[int | str | list[int], PlainValidator(_devices)]
    precision: Annotated[str, PlainValidator(_precision)]
    log_every_n_steps: PositiveInt
    deterministic: Annotated[bool | str, PlainValidator(_deterministic)]
    seeds: Annotated[list[Seed], Field(min_length=1), AfterValidator(_distinct)] | None = None
    patience: Count = 10
    strategy: Literal[STRATEGIES] = "auto"
    num_nodes: PositiveInt = 1
    gradient_clip_val: Positive | None = None
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    class_weights: Literal[CLASS_WEIGHTS] = "none"
    sampler: Literal[SAMPLERS] = "shuffle"
    resume: bool = True
    calibrate: Literal["none", "temperature"] = "none"
    frame_loss_weight: NonNegative = 1.0
    event_median_frames: Annotated[list[Annotated[int, Field(ge=1, le=MAX_MEDIAN_FRAMES), AfterValidator(_odd)]],
                                   Field(min_length=1), AfterValidator(_distinct)] = [1]
    event_min_duration: NonNegative = 0.0
    event_min_gap: NonNegative = 0.0
    # name -> null (dropped) or {_target_: dotted class path, ...its arguments}
    callbacks: dict[str, dict[str, Any] | None] = {}

    @model_validator(mode="after")
    def _callbacks(self) -> "TrainerSettings":
        callbacks = self.callbacks
        for name, spec in callbacks.items():
            if spec is None:
                continue
            target = spec.get("_target_")
            if not (isinstance(target, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", target)
                    and importlib.util.find_spec(target.split(".")[0])):
                raise ValueError(f"trainer.callbacks.{name}._target_={show(target)}: must be the dotted path of an "
                                 "installed callback class, e.g. lightning.pytorch.callbacks.EarlyStopping")
            if target.endswith(".StochasticWeightAveraging"):
                parse_settings(SWAArguments, {k: v for k, v in spec.items() if k != "_target_"},
                               f"trainer.callbacks.{name}")
        swa, early = ([name for name, spec in callbacks.items() if spec and str(spec.get("_target_")).endswith(suffix)]
                      for suffix in (".StochasticWeightAveraging", ".EarlyStopping"))
        if swa and early:
            raise ValueError(f"trainer.callbacks.{swa[0]}: beside trainer.callbacks.{early[0]}, training can stop "
                             "before swa_epoch_start and nothing is averaged; drop one "
                             f"(trainer.callbacks.{early[0]}=null, as +trainer/callbacks=swa does)")
        return self


def trainer_settings(values) -> TrainerSettings:
    """The `trainer` group (plain values, `OmegaConf.to_container`) as `TrainerSettings`; `ConfigError`
    naming its first bad setting."""
    return parse_settings(TrainerSettings, values, "trainer")
