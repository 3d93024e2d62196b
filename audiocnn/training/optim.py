"""Optimisation recipe: optimizer over parameter groups, learning-rate schedule, loss, precision.

`conf/optimizer/` (`sgd`, `adamw`, `adadelta`: a `_target_` plus its arguments) and
`conf/scheduler/` (`none`, `plateau`, `cosine`, `onecycle`: a `name` plus settings; the
schedule needs the run's length, known only at fit time, so it is built here rather than
instantiated). `optimizer.backbone_lr_scale` makes two parameter groups (see `transfer`);
every schedule scales each group's own learning rate.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, OneCycleLR, ReduceLROnPlateau, SequentialLR

from audiocnn.training.transfer import parameter_groups

SCHEDULERS = ("none", "plateau", "cosine", "onecycle")
SCHEDULER_KEYS = {
    "none": set(),
    "plateau": {"monitor", "factor", "patience", "min_lr"},
    "cosine": {"warmup_epochs", "warmup_start_factor", "min_lr_factor"},
    "onecycle": {"pct_start", "div_factor", "final_div_factor"},
}
PRECISIONS = ("32-true", "32", "bf16-mixed")
CLASS_WEIGHTS = ("none", "balanced")


def build_optimizer(model: nn.Module, optimizer_cfg: Mapping[str, Any]) -> Optimizer:
    """`optimizer._target_` over head and backbone groups (backbone at lr * backbone_lr_scale)."""
    kwargs = {k: v for k, v in optimizer_cfg.items() if k not in ("name", "backbone_lr_scale")}
    groups = parameter_groups(model, kwargs["lr"], optimizer_cfg.get("backbone_lr_scale", 1.0))
    return instantiate(kwargs, _partial_=True)(groups)  # partial: Hydra would wrap the tensors


def build_scheduler(optimizer: Optimizer, scheduler_cfg: Mapping[str, Any], max_epochs: int,
                    total_steps: int) -> dict | None:
    """Lightning's `lr_scheduler` dict for `scheduler_cfg`, or None for `none`.

    `total_steps` (optimizer steps of the whole run) sizes `onecycle`; `max_epochs` sizes `cosine`.
    """
    name = scheduler_cfg.get("name", "none")
    if name == "none":
        return None
    if name == "plateau":
        scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=scheduler_cfg["factor"],
                                      patience=scheduler_cfg["patience"], min_lr=scheduler_cfg["min_lr"])
        return {"scheduler": scheduler, "monitor": scheduler_cfg["monitor"], "interval": "epoch"}
    if name == "cosine":
        warmup = int(scheduler_cfg["warmup_epochs"])
        base = [group["lr"] for group in optimizer.param_groups]
        cosine = CosineAnnealingLR(optimizer, T_max=max(1, max_epochs - warmup),
                                   eta_min=min(base) * scheduler_cfg["min_lr_factor"])
        if warmup > 0:
            ramp = LinearLR(optimizer, start_factor=scheduler_cfg["warmup_start_factor"], total_iters=warmup)
            cosine = SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
        return {"scheduler": cosine, "interval": "epoch"}
    if name == "onecycle":
        scheduler = OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
                               total_steps=max(1, int(total_steps)), pct_start=scheduler_cfg["pct_start"],
                               div_factor=scheduler_cfg["div_factor"],
                               final_div_factor=scheduler_cfg["final_div_factor"])
        return {"scheduler": scheduler, "interval": "step"}
    raise ValueError(f"scheduler.name={name!r}; allowed: {', '.join(SCHEDULERS)}")


def class_weights(train_labels: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    """`balanced`: n / (n_classes * count_c) per class from the train split's labels; `none`: None.

    A class absent from the train split gets weight 0 (it cannot be learnt anyway).
    """
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=n_classes).astype(float)
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


def validate_optimisation(cfg) -> None:
    """Raise `ConfigError` naming the first bad optimizer/scheduler/trainer setting."""
    from audiocnn.config import ConfigError

    scheduler = cfg.get("scheduler") or {"name": "none"}
    name = scheduler.get("name")
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name={name}: allowed: {', '.join(SCHEDULERS)}")
    unknown = set(scheduler) - SCHEDULER_KEYS[name] - {"name"}
    if unknown:
        raise ConfigError(f"scheduler.{sorted(unknown)[0]}: not a setting of scheduler {name}; allowed: "
                          f"{', '.join(sorted(SCHEDULER_KEYS[name])) or 'none'}")
    missing = SCHEDULER_KEYS[name] - set(scheduler)
    if missing:
        raise ConfigError(f"scheduler.{sorted(missing)[0]}: missing for scheduler {name}")
    if name == "plateau" and scheduler.monitor not in ("val_loss",):
        raise ConfigError(f"scheduler.monitor={scheduler.monitor}: allowed: val_loss")
    for key in ("factor", "warmup_start_factor", "min_lr_factor", "pct_start"):
        if key in scheduler and not 0 < scheduler[key] <= 1:
            raise ConfigError(f"scheduler.{key}={scheduler[key]}: must be in (0, 1]")
    trainer = cfg.trainer
    if str(trainer.get("precision", "32-true")) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer.precision}: allowed: {', '.join(PRECISIONS)}")
    if trainer.get("class_weights", "none") not in CLASS_WEIGHTS:
        raise ConfigError(f"trainer.class_weights={trainer.class_weights}: allowed: {', '.join(CLASS_WEIGHTS)}")
    smoothing = trainer.get("label_smoothing", 0.0)
    if not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise ConfigError(f"trainer.label_smoothing={smoothing}: must be a number in [0, 1)")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip <= 0 or math.isinf(clip)):
        raise ConfigError(f"trainer.gradient_clip_val={clip}: must be null or a positive number")
