"""Optimisation recipe: optimizer over parameter groups, learning-rate schedule, loss, precision.

`conf/optimizer/` (`sgd`, `adamw`, `adadelta`) and `conf/scheduler/` (`none`, `plateau`,
`cosine`, `onecycle`) are `_target_`s plus their arguments, instantiated with `_partial_`:
the optimizer gets its parameter groups, the scheduler its optimizer and the run's length
(known only at fit time: `max_epochs`, `total_steps`) when its function takes them. A
scheduler config also says when Lightning steps it (`interval`) and, for plateau, what it
watches (`monitor`). `optimizer.backbone_lr_scale` makes two parameter groups (see
`transfer`); every schedule scales each group's own learning rate.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np
import torch
from hydra.utils import get_method, instantiate
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from audiocnn.errors import ConfigError
from audiocnn.training.transfer import parameter_groups

LIGHTNING_KEYS = ("name", "interval", "monitor")  # how Lightning runs a scheduler, not its arguments
RUN_LENGTH = ("max_epochs", "total_steps")  # given at fit time to schedules that take them
PRECISIONS = ("32-true", "32", "bf16-mixed")
CLASS_WEIGHTS = ("none", "balanced")


def build_optimizer(model: nn.Module, optimizer_cfg: Mapping[str, Any]) -> Optimizer:
    """`optimizer._target_` over head and backbone groups (backbone at lr * backbone_lr_scale)."""
    kwargs = {k: v for k, v in optimizer_cfg.items() if k not in ("name", "backbone_lr_scale")}
    groups = parameter_groups(model, kwargs["lr"], optimizer_cfg.get("backbone_lr_scale", 1.0))
    return instantiate(kwargs, _partial_=True)(groups)  # partial: Hydra would wrap the tensors


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


def scheduler_arguments(scheduler_cfg: Mapping[str, Any]) -> dict:
    return {k: v for k, v in scheduler_cfg.items() if k not in LIGHTNING_KEYS}


def build_scheduler(optimizer: Optimizer, scheduler_cfg: Mapping[str, Any], max_epochs: int,
                    total_steps: int) -> dict | None:
    """Lightning's `lr_scheduler` dict for `scheduler_cfg`, or None without a `_target_` (`none`).

    `total_steps` (optimizer steps of the whole run) and `max_epochs` go to schedules that take them.
    """
    if "_target_" not in scheduler_cfg:
        return None
    factory = instantiate(scheduler_arguments(scheduler_cfg), _partial_=True)
    accepted = inspect.signature(get_method(scheduler_cfg["_target_"])).parameters
    length = {k: v for k, v in (("max_epochs", max_epochs), ("total_steps", total_steps)) if k in accepted}
    schedule = {"scheduler": factory(optimizer, **length), "interval": scheduler_cfg.get("interval", "epoch")}
    if scheduler_cfg.get("monitor"):
        schedule["monitor"] = scheduler_cfg["monitor"]
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


def validate_optimisation(cfg) -> None:
    """Raise `ConfigError` naming the first bad scheduler setting: a key its `_target_` does not take,
    an `interval` or `monitor` Lightning cannot use (each key's range: `audiocnn.validation.rules`)."""

    scheduler = cfg.get("scheduler") or {"name": "none"}
    name = scheduler.get("name", "none")
    if "_target_" in scheduler:
        try:
            accepted = inspect.signature(get_method(scheduler["_target_"])).parameters
        except Exception as error:  # noqa: BLE001 - hydra says why it cannot import it
            raise ConfigError(f"scheduler._target_={scheduler['_target_']}: {str(error).splitlines()[0]}") from None
        allowed = sorted(set(accepted) - {"optimizer", *RUN_LENGTH} - {"verbose", "last_epoch"})
        for key in scheduler_arguments(scheduler):
            if key not in (*allowed, "_target_", "_partial_"):
                raise ConfigError(f"scheduler.{key}: not a setting of scheduler {name}; allowed: "
                                  f"{', '.join(allowed) or 'none'}")
    if scheduler.get("interval", "epoch") not in ("epoch", "step"):
        raise ConfigError(f"scheduler.interval={scheduler.interval}: allowed: epoch, step")
    if scheduler.get("monitor", "val_loss") not in ("val_loss",):
        raise ConfigError(f"scheduler.monitor={scheduler.monitor}: allowed: val_loss")
