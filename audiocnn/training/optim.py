"""Optimisation recipe: optimizer over parameter groups, learning-rate schedule, loss, precision.

`conf/optimizer/` (`sgd`, `adamw`, `adadelta`) and `conf/scheduler/` (`none`, `plateau`,
`cosine`, `onecycle`) are `_target_`s plus their arguments, read once per job as
`OptimizerSettings` and `SchedulerSettings` (pydantic: each known argument's type and range, every
other key an argument of the `_target_`) and instantiated with `_partial_`: the optimizer gets its
parameter groups, the scheduler its optimizer and the run's length (known only at fit time:
`max_epochs`, `total_steps`) when its function takes them. A scheduler config also says when
Lightning steps it (`interval`) and, for plateau, what it watches (`monitor`).
`optimizer.backbone_lr_scale` makes two parameter groups (see `transfer`); every schedule scales
each group's own learning rate.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from hydra.utils import get_method, instantiate
from pydantic import AfterValidator, BaseModel, Field, model_validator
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from audiocnn.data.settings import Count, NonNegative, Positive, Text, Unit, UnitOpen
from audiocnn.errors import SETTINGS_CONFIG, parse_settings, show
from audiocnn.training.transfer import parameter_groups

RUN_LENGTH = ("max_epochs", "total_steps")  # given at fit time to schedules that take them
PRECISIONS = ("32-true", "32", "bf16-mixed")
CLASS_WEIGHTS = ("none", "balanced")
# a schema that takes the arguments of a class it names: `extra` keys are allowed, each checked by its validator
CLASS_ARGUMENTS_CONFIG = {**SETTINGS_CONFIG, "extra": "allow", "populate_by_name": True}


def _betas(value: list[float]) -> list[float]:
    if len(value) != 2 or not all(0 <= v < 1 for v in value):
        raise ValueError("must be a pair of numbers in [0, 1)")
    return value


def _plain_argument(value: Any) -> bool:
    """A value a key without a rule of its own may take: a finite number, a bool, null, a list of numbers."""
    values = value if isinstance(value, list) else [value]
    return all(v is None or isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v)) for v in values)


def _check_arguments(settings: BaseModel, own: tuple[str, ...], accepted: set[str], where: str, owner: str) -> None:
    """Every key of `settings` given (its fields set and its extra keys) but `own` is in `accepted`, and an
    extra key's value is a plain argument (`_plain_argument`); ValueError naming the first that is not."""
    extra = settings.model_extra or {}
    given = [*(settings.model_fields[f].alias or f for f in settings.model_fields_set - set(extra)), *extra]
    for key in given:
        if key not in own and key not in accepted:
            raise ValueError(f"{where}.{key}: not {owner}; allowed: {', '.join(sorted(accepted)) or 'none'}")
    for key, value in (settings.model_extra or {}).items():
        if not _plain_argument(value):
            raise ValueError(f"{where}.{key}={show(value)}: must be a finite number, true/false, or a list of numbers")


def optimizer_class(target: str) -> type:
    """The class `optimizer._target_` names; ValueError unless it is a `torch.optim.Optimizer`."""
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        found = None
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise ValueError("not a torch.optim.Optimizer class (choose a config from conf/optimizer/, e.g. "
                         "torch.optim.AdamW)")
    return found


class OptimizerSettings(BaseModel):
    """The `optimizer` group: a `torch.optim.Optimizer` class (`_target_`) and its arguments. The arguments
    conf/optimizer/ uses have their ranges here; any other must be an argument of the class and a plain
    value. `name` and `backbone_lr_scale` are audiocnn's (the backbone's rate is lr x backbone_lr_scale)."""
    model_config = CLASS_ARGUMENTS_CONFIG

    target: Annotated[str, AfterValidator(lambda t: optimizer_class(t) and t)] = Field(alias="_target_")
    name: Text
    lr: Positive
    backbone_lr_scale: Positive = 1.0
    weight_decay: NonNegative = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    dampening: Unit = 0.0
    nesterov: bool = False
    amsgrad: bool = False
    rho: Unit = 0.9
    eps: Positive = 1e-8
    betas: Annotated[list[float], AfterValidator(_betas)] = [0.9, 0.999]

    @model_validator(mode="after")
    def _arguments(self) -> "OptimizerSettings":
        accepted = set(inspect.signature(optimizer_class(self.target)).parameters) - {"params"}
        _check_arguments(self, ("_target_", "name", "backbone_lr_scale"), accepted, "{where}",
                         f"an argument of {self.target}")
        if self.nesterov and not self.momentum:
            raise ValueError(f"{{where}}.nesterov=true: needs {{where}}.momentum > 0 ({{where}}.momentum="
                             f"{show(self.momentum)})")
        return self

    def arguments(self) -> dict:
        """`_target_` and the class's arguments as given (the defaults above are the class's own or unused)."""
        own = {"target", "name", "backbone_lr_scale", *(self.model_extra or {})}
        given = {f: getattr(self, f) for f in self.model_fields_set - own}
        return {"_target_": self.target, **given, **(self.model_extra or {})}


class SchedulerSettings(BaseModel):
    """The `scheduler` group: `name` and, but for `none`, a schedule function or class (`_target_`) with its
    arguments (the ones conf/scheduler/ uses have their ranges here; any other must be one it takes), when
    Lightning steps it (`interval`) and what it watches (`monitor`: plateau)."""
    model_config = CLASS_ARGUMENTS_CONFIG

    name: Text = "none"
    target: Text | None = Field(None, alias="_target_")
    interval: Literal["epoch", "step"] = "epoch"
    monitor: Literal["val_loss"] | None = None
    mode: Literal["min"] = "min"
    factor: UnitOpen = 0.1
    warmup_start_factor: UnitOpen = 0.1
    min_lr_factor: UnitOpen = 0.01
    pct_start: UnitOpen = 0.3
    warmup_epochs: Count = 3
    patience: Count = 10
    div_factor: Positive = 25.0
    final_div_factor: Positive = 1e4
    min_lr: NonNegative = 0.0

    @model_validator(mode="after")
    def _arguments(self) -> "SchedulerSettings":
        accepted: set[str] = set()
        if self.target is not None:
            try:
                accepted = set(inspect.signature(get_method(self.target)).parameters)
            except Exception as error:  # noqa: BLE001 - hydra says why it cannot import it
                raise ValueError(f"{{where}}._target_={self.target}: {str(error).splitlines()[0]}") from None
            accepted -= {"optimizer", *RUN_LENGTH, "verbose", "last_epoch"}
        _check_arguments(self, ("name", "_target_", "interval", "monitor"), accepted, "{where}",
                         f"a setting of scheduler {self.name}")
        return self

    def arguments(self) -> dict:
        """`_target_` and the schedule's arguments as given (what `instantiate` builds it from)."""
        own = {"name", "target", "interval", "monitor", *(self.model_extra or {})}
        given = {f: getattr(self, f) for f in self.model_fields_set - own}
        return {"_target_": self.target, **given, **(self.model_extra or {})}


def optimizer_settings(values) -> OptimizerSettings:
    """The `optimizer` group (plain values) as `OptimizerSettings`; `ConfigError` naming its first bad key."""
    return parse_settings(OptimizerSettings, values, "optimizer")


def scheduler_settings(values) -> SchedulerSettings:
    """The `scheduler` group (plain values; None: `none`) as `SchedulerSettings`; `ConfigError` naming its
    first bad key."""
    return parse_settings(SchedulerSettings, values, "scheduler")


def build_optimizer(model: nn.Module, settings: OptimizerSettings) -> Optimizer:
    """`optimizer._target_` over head and backbone groups (backbone at lr * backbone_lr_scale)."""
    groups = parameter_groups(model, settings.lr, settings.backbone_lr_scale)
    return instantiate(settings.arguments(), _partial_=True)(groups)  # partial: Hydra would wrap the tensors


def warmup_cosine(optimizer: Optimizer, max_epochs: int, warmup_epochs: int = 3, warmup_start_factor: float = 0.1,
                  min_lr_factor: float = 0.01) -> LRScheduler:
    """Linear warm-up over `warmup_epochs`, then cosine decay to `min_lr_factor` x the smallest lr."""
    base = [group["lr"] for group in optimizer.param_groups]
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, max_epochs - warmup_epochs), eta_min=min(base) * min_lr_factor)
    if warmup_epochs <= 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup_epochs)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup_epochs])


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> OneCycleLR:
    """`OneCycleLR` peaking at each parameter group's own lr (`optimizer.lr`, scaled for the backbone)."""
    return OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
                      total_steps=max(1, int(total_steps)), pct_start=pct_start, div_factor=div_factor,
                      final_div_factor=final_div_factor)


def build_scheduler(optimizer: Optimizer, settings: SchedulerSettings, max_epochs: int, total_steps: int
                    ) -> dict | None:
    """Lightning's `lr_scheduler` dict for `settings`, or None without a `_target_` (`none`).

    `total_steps` (optimizer steps of the whole run) and `max_epochs` go to schedules that take them.
    """
    if settings.target is None:
        return None
    factory = instantiate(settings.arguments(), _partial_=True)
    accepted = inspect.signature(get_method(settings.target)).parameters
    length = {k: v for k, v in (("max_epochs", max_epochs), ("total_steps", total_steps)) if k in accepted}
    schedule = {"scheduler": factory(optimizer, **length), "interval": settings.interval}
    if settings.monitor:
        schedule["monitor"] = settings.monitor
    return schedule


def class_weights(train_labels: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    """`balanced`: from the train split's labels; `none`: None.

    Class indices `(clips,)`: n / (n_classes * count_c) per class (cross-entropy's `weight`); a class
    absent from the train split gets 0 (it cannot be learnt anyway). Multi-label 0/1 targets
    `(clips, n_classes)`: negatives / positives per class (`BCEWithLogitsLoss`'s `pos_weight`, so each
    class's positives weigh as much as its negatives); 1 for a class without positives.
    """
    if mode == "none":
        return None
    train_labels = np.asarray(train_labels)
    if train_labels.ndim == 2:
        positives = train_labels.sum(axis=0).astype(float)
        weights = np.where(positives > 0, (len(train_labels) - positives) / np.maximum(positives, 1), 1.0)
        return torch.tensor(weights, dtype=torch.float32)
    counts = np.bincount(train_labels.astype(int), minlength=n_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def resolve_precision(precision: str, accelerator: str) -> str:
    """`bf16-mixed` needs a CUDA GPU with bf16; without one, fall back to `32-true` and say so.

    We fall back rather than refuse so that one params.yaml runs on a GPU box and on a laptop;
    the precision actually used is printed and logged (`trainer.precision_used`).
    """
    if str(precision) != "bf16-mixed":
        return str(precision)
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if gpu:
        return "bf16-mixed"
    print("train: trainer.precision=bf16-mixed needs a CUDA GPU with bf16 support; none is used here "
          f"(trainer.accelerator={accelerator}), so training runs in 32-true")
    return "32-true"
