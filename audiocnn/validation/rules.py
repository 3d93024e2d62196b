"""One rule per setting: `rules()` maps each dotted key to a check, `check_rules` applies them all.

A rule is a callable `value -> None | what is allowed` (`Number`, `Choice`, `Text` from `kinds`, or a function
for lists and mappings; one that checks a mapping raises `ConfigError` naming the key inside it
itself); `check_rules` turns a problem into `ConfigError("<key>=<value>: <what is
allowed>")`, and a missing key a stage reads without a default. The groups with a schema (`data`,
`features`, `trainer`, `evaluate`, `serving`, `tracking`) are not here; see `audiocnn.validation`.
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig, OmegaConf

from audiocnn.errors import ConfigError
from audiocnn.validation.kinds import BOOL, COUNT, POSITIVE, SEED, Choice, Number, Text, _list_of, show


def _betas(value) -> str | None:
    problem = _list_of(Number(0, 1, high_open=True), "a pair of numbers in [0, 1)", distinct=False, null=False)(value)
    return problem or (None if len(value) == 2 else "must be a pair of numbers in [0, 1)")


def _member(value) -> str | None:
    """An ensemble member; Hydra reads an all-digit run id or folder name as an integer (used as text)."""
    return None if isinstance(value, int) and not isinstance(value, bool) else Text()(value)


def rules() -> dict[str, Callable]:
    """{dotted key: rule} for every checked setting."""
    from audiocnn.models.norm import NORM_TYPES, norm_rule

    return {
        "lock_timeout_s": Number(0),
        "optimizer._target_": Text(), "optimizer.name": Text(), "optimizer.lr": POSITIVE,
        "optimizer.backbone_lr_scale": POSITIVE, "optimizer.weight_decay": Number(0),
        "optimizer.momentum": Number(0, 1, high_open=True), "optimizer.dampening": Number(0, 1),
        "optimizer.nesterov": BOOL, "optimizer.amsgrad": BOOL, "optimizer.rho": Number(0, 1),
        "optimizer.eps": POSITIVE, "optimizer.betas": _betas,
        **{f"scheduler.{k}": Number(0, 1, low_open=True) for k in ("factor", "warmup_start_factor", "min_lr_factor",
                                                                   "pct_start")},
        "scheduler.warmup_epochs": COUNT, "scheduler.patience": COUNT, "scheduler.div_factor": POSITIVE,
        "scheduler.final_div_factor": POSITIVE, "scheduler.min_lr": Number(0), "scheduler.mode": Choice(("min",)),
        "model.event_time_stride": Number(0, low_open=True, integer=True, null=True),
        "model.norm.type": Choice(NORM_TYPES), "model.norm": norm_rule, "model.norm.trainable": BOOL,
        **{f"model.norm.{k}": Number(0, 1, low_open=True) for k in ("alpha", "r", "s")},
        **{f"model.norm.{k}": POSITIVE for k in ("delta", "eps", "min_std")},
        "seed": SEED, "ensemble": _list_of(_member, "a list of MLflow run ids, model URIs or model folders",
                                           empty=True),
        **{f"paths.{k}": Text() for k in ("raw", "prepared", "features", "models", "metrics")},
    }


# A key a stage reads without a default must be there: every paths key, and REQUIRED; other groups' keys
# vary by option (an optimizer's keys are the arguments of its class: `checks.validate_optimizer`).
REQUIRED_GROUPS = ("paths",)
REQUIRED = {"optimizer._target_", "optimizer.lr", "seed"}
_ABSENT = object()


def check_rules(cfg: DictConfig) -> None:
    """Apply `rules()` to `cfg`: missing required keys and bad values raise `ConfigError`."""
    for key, rule in rules().items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            if key in REQUIRED or key.split(".")[0] in REQUIRED_GROUPS:
                raise ConfigError(f"{key}: missing; {rule(_ABSENT)}")
            continue
        problem = rule(value)
        if problem:
            raise ConfigError(f"{key}={show(value)}: {problem}")
