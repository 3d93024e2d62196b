"""One rule per setting: `rules()` maps each dotted key to a check, `check_rules` applies them all.

A rule is a callable `value -> None | what is allowed` (`Number`, `Choice`, `Text` from `kinds`, or a function
for lists and mappings; one that checks a mapping raises `ConfigError` naming the key inside it
itself); `check_rules` turns a problem into `ConfigError("<key>=<value>: <what is
allowed>")`, refuses keys of `CHECKED_GROUPS` that have no rule, and a missing key a stage reads
without a default. See `audiocnn.validation` for what is checked elsewhere.
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig, OmegaConf

from audiocnn.data.event_decoding import MAX_MEDIAN_FRAMES
from audiocnn.errors import ConfigError
from audiocnn.validation.kinds import (BOOL, COUNT, POSITIVE, POSITIVE_INT, SEED, SEED_MAX, Choice,
                                       Number, Text, _list_of, show)
# Lightning strategies the train stage supports: ddp re-runs the command once per extra process
# (audiocnn.training.distributed); ddp_spawn would pickle the data module into its processes.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


def _odd_frames(value) -> str | None:
    return Number(1, MAX_MEDIAN_FRAMES, integer=True)(value) or (None if value % 2 else "odd")


def _devices(value) -> str | None:
    if value == "auto" or (value == -1 and type(value) is int) or not Number(0, low_open=True, integer=True)(value):
        return None
    if isinstance(value, str) and value.replace(",", "").replace(" ", "").isdigit():
        return None  # "0,1": Lightning's device-index string
    if not _list_of(Number(0, integer=True), "", null=False)(value):
        return None
    return "allowed: auto, a positive number of devices, -1 (all), or a list of device indices such as [0,1]"


def _callbacks(value) -> str | None:
    """name -> null or {_target_: dotted class path, ...}; the class is imported when the trainer is built
    (importing Lightning here would cost every stage seconds), so only its top-level package is looked up."""
    import importlib.util
    import re

    if value is None:
        return None
    if not isinstance(value, DictConfig):
        return "must be a mapping of name -> {_target_: <Lightning callback class>, ...} or null"
    for name, spec in value.items():
        if spec is None:
            continue
        target = spec.get("_target_") if isinstance(spec, DictConfig) else None
        if not (isinstance(target, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", target)
                and importlib.util.find_spec(target.split(".")[0])):
            raise ConfigError(f"trainer.callbacks.{name}._target_={show(target)}: must be the dotted path of an "
                              "installed callback class, e.g. lightning.pytorch.callbacks.EarlyStopping")
        if target.endswith(".StochasticWeightAveraging"):
            _swa_arguments(f"trainer.callbacks.{name}", spec)
    _swa_without_early_stopping(value)
    return None


def _swa_without_early_stopping(callbacks: DictConfig) -> None:
    """SWA averages from swa_epoch_start on; an early stop before it leaves nothing averaged, so the two
    are refused together (`+trainer/callbacks=swa` sets trainer.callbacks.early_stopping=null)."""
    def named(suffix: str) -> list[str]:
        return [name for name, spec in callbacks.items() if spec is not None and str(spec.get("_target_")).endswith(suffix)]

    swa, early_stopping = named(".StochasticWeightAveraging"), named(".EarlyStopping")
    if swa and early_stopping:
        raise ConfigError(f"trainer.callbacks.{swa[0]}: beside trainer.callbacks.{early_stopping[0]}, training can stop "
                          "before swa_epoch_start and nothing is averaged; drop one "
                          f"(trainer.callbacks.{early_stopping[0]}=null, as +trainer/callbacks=swa does)")


# Lightning checks these only when the trainer is built (after prepare and featurize); conf/trainer/callbacks/swa.yaml
SWA_ARGUMENTS = {"swa_lrs": Number(0, low_open=True), "annealing_epochs": Number(0, low_open=True, integer=True),
                 "annealing_strategy": Choice(("cos", "linear")), "device": Text(null=True),
                 "swa_epoch_start": lambda v: None if (not Number(1, integer=True)(v) or not Number(
                     0, 1, low_open=True)(v)) else "must be an epoch number >= 1 or a fraction in (0, 1] of max_epochs"}


def _swa_arguments(where: str, spec: DictConfig) -> None:
    for key, value in spec.items():
        rule = SWA_ARGUMENTS.get(key) if key != "_target_" else (lambda v: None)
        if rule is None:
            raise ConfigError(f"{where}.{key}: unknown argument of StochasticWeightAveraging; allowed: "
                              f"{', '.join(SWA_ARGUMENTS)}")
        if rule(value):
            raise ConfigError(f"{where}.{key}={show(value)}: {rule(value)}")
    if "swa_lrs" not in spec:
        raise ConfigError(f"{where}.swa_lrs: missing; {SWA_ARGUMENTS['swa_lrs'](None)}")


def _betas(value) -> str | None:
    problem = _list_of(Number(0, 1, high_open=True), "a pair of numbers in [0, 1)", distinct=False, null=False)(value)
    return problem or (None if len(value) == 2 else "must be a pair of numbers in [0, 1)")


def _member(value) -> str | None:
    """An ensemble member; Hydra reads an all-digit run id or folder name as an integer (used as text)."""
    return None if isinstance(value, int) and not isinstance(value, bool) else Text()(value)


def rules() -> dict[str, Callable]:
    """{dotted key: rule} for every checked setting."""
    from audiocnn.models.norm import NORM_TYPES, norm_rule
    from audiocnn.training.optim import CLASS_WEIGHTS, PRECISIONS
    from audiocnn.training.sampling import SAMPLERS

    return {
        "lock_timeout_s": Number(0),
        "trainer.max_epochs": POSITIVE_INT, "trainer.batch_size": POSITIVE_INT, "trainer.patience": COUNT,
        "trainer.seeds": _list_of(SEED, f"a list of distinct integers in [0, {SEED_MAX}] such as [0,1,2]"),
        "trainer.num_workers": COUNT, "trainer.accelerator": Choice(("auto", "cpu", "gpu", "cuda", "mps")),
        "trainer.devices": _devices, "trainer.strategy": Choice(STRATEGIES), "trainer.num_nodes": POSITIVE_INT,
        "trainer.precision": Choice(PRECISIONS, text=True),
        "trainer.log_every_n_steps": POSITIVE_INT, "trainer.deterministic": Choice((True, False, "warn")),
        "trainer.gradient_clip_val": Number(0, low_open=True, null=True),
        "trainer.label_smoothing": Number(0, 1, high_open=True), "trainer.class_weights": Choice(CLASS_WEIGHTS),
        "trainer.sampler": Choice(SAMPLERS),
        "trainer.callbacks": _callbacks, "trainer.resume": BOOL,
        "trainer.calibrate": Choice(("none", "temperature")),
        "trainer.frame_loss_weight": Number(0),  # the events task's frame term (training.events)
        # the events task's decoding (training.event_postprocessing)
        "trainer.event_median_frames": _list_of(_odd_frames, "a list of odd numbers of frames in "
                                                f"[1, {MAX_MEDIAN_FRAMES}] such as [1,3,5,7]", null=False),
        "trainer.event_min_duration": Number(0), "trainer.event_min_gap": Number(0),
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


# A key a stage reads without a default must be there: every trainer/paths key but
# those in OPTIONAL (read with `.get(key, default)`), and REQUIRED; other groups' keys vary by option.
REQUIRED_GROUPS = ("trainer", "paths")
REQUIRED = {"optimizer._target_", "optimizer.lr", "seed"}
OPTIONAL = {"trainer.seeds", "trainer.patience", "trainer.gradient_clip_val",
            "trainer.strategy", "trainer.num_nodes", "trainer.label_smoothing", "trainer.class_weights",
            "trainer.callbacks", "trainer.resume", "trainer.calibrate", "trainer.frame_loss_weight", "trainer.event_median_frames",
            "trainer.event_min_duration", "trainer.event_min_gap"}
# Unknown keys refused; an optimizer's keys are the arguments of its class (`checks.validate_optimizer`).
CHECKED_GROUPS = ("trainer",)  # data, features, evaluate, serving, tracking: typed settings (their schemas)
_ABSENT = object()


def check_rules(cfg: DictConfig) -> None:
    """Apply `rules()` to `cfg`: missing required keys, unknown keys and bad values raise `ConfigError`."""
    table = rules()
    for key, rule in table.items():
        group = key.split(".")[0]
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            if key in REQUIRED or (group in REQUIRED_GROUPS and key not in OPTIONAL):
                raise ConfigError(f"{key}: missing; {rule(_ABSENT)}")
            continue
        problem = rule(value)
        if problem:
            raise ConfigError(f"{key}={show(value)}: {problem}")
    for group in CHECKED_GROUPS:
        for key in _leaf_keys(cfg.get(group) or {}, group, table):
            if key not in table:
                known = sorted(k.removeprefix(f"{group}.") for k in table if k.startswith(f"{group}."))
                raise ConfigError(f"{key}: unknown setting; allowed: {', '.join(known)}")


def _leaf_keys(node: DictConfig, prefix: str, rules: dict) -> list[str]:
    """Dotted keys under `node`; a mapping is entered only where rules name keys inside it."""
    keys = []
    for key in node:
        full = f"{prefix}.{key}"
        if isinstance(node[key], DictConfig) and full not in rules and any(r.startswith(full + ".") for r in rules):
            keys += _leaf_keys(node[key], full, rules)
        else:
            keys.append(full)
    return keys
