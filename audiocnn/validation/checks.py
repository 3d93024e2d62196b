"""Checks across settings, run after every key passed its own rule (`validation.rules`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from audiocnn.errors import ConfigError
from audiocnn.validation.kinds import Choice, Number, show
from audiocnn.validation.rules import rules


def validate_features(cfg: DictConfig) -> None:
    """The `features` group against its schema (`features.settings.FeatureSettings`: types, ceilings, the
    top bin below Nyquist, the front-end's costs, the limits a model file's settings meet too)."""
    from audiocnn.features.settings import feature_settings

    feature_settings(cfg)


def validate_hardware(cfg: DictConfig) -> None:
    """`features.device=cuda` and `trainer.accelerator=gpu|cuda|mps` need that device here."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.features.device == "cuda" and not cuda:
        raise ConfigError("features.device=cuda: no CUDA GPU is available here; allowed here: auto, cpu")
    accelerator = cfg.trainer.accelerator
    mps = getattr(torch.backends, "mps", None)
    if (accelerator in ("gpu", "cuda") and not cuda) or (accelerator == "mps" and not (mps and mps.is_available())):
        raise ConfigError(f"trainer.accelerator={accelerator}: no such device is available here; allowed here: "
                          f"auto, cpu{', gpu, cuda' if cuda else ''}")


OWN_OPTIMIZER_KEYS = ("_target_", "name", "backbone_lr_scale")  # audiocnn's, not passed to the optimizer class


def validate_optimizer(cfg: DictConfig) -> None:
    """`optimizer._target_` is a torch optimizer; every other key is an argument of it (one without a rule
    a finite number, a bool, null or a list of numbers); Nesterov momentum needs momentum."""
    import inspect

    accepted = inspect.signature(optimizer_class(cfg)).parameters
    table = rules()
    for name, value in cfg.optimizer.items():
        key = f"optimizer.{name}"
        if name in OWN_OPTIMIZER_KEYS:
            continue
        if name == "params" or name not in accepted:
            raise ConfigError(f"{key}: not an argument of {cfg.optimizer._target_}; allowed: "
                              f"{', '.join(sorted(set(accepted) - {'params'}))}")
        values = list(value) if isinstance(value, ListConfig) else [value]
        if key not in table and not all(v is None or isinstance(v, bool) or not Number()(v) for v in values):
            raise ConfigError(f"{key}={show(value)}: must be a finite number, true/false, or a list of numbers")
    if cfg.optimizer.get("nesterov") and not cfg.optimizer.get("momentum"):
        raise ConfigError(f"optimizer.nesterov=true: needs optimizer.momentum > 0 "
                          f"(optimizer.momentum={show(cfg.optimizer.get('momentum'))})")


def optimizer_class(cfg: DictConfig) -> type:
    """The class `optimizer._target_` names; `ConfigError` unless it is a `torch.optim.Optimizer`."""
    import importlib

    import torch

    target = str(cfg.optimizer._target_)
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        found = None
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer._target_={target}: not a torch.optim.Optimizer class (choose a config from "
                          "conf/optimizer/, e.g. torch.optim.AdamW)")
    return found


def validate_model(cfg: DictConfig) -> None:
    from audiocnn.models.blocks import BlockSpec
    from audiocnn.models.bundle import MODEL_CLASSES
    from audiocnn.models.blocks import trace_shapes
    from audiocnn.training.transfer import FREEZE_OPTIONS

    from audiocnn.errors import ShapeError

    if cfg.model.get("_target_") not in MODEL_CLASSES:  # what a model file may name when it is loaded back
        raise ConfigError(f"model._target_={cfg.model.get('_target_')}: not an audiocnn model; allowed: "
                          f"{', '.join(MODEL_CLASSES)} (choose a config from conf/model/)")
    problem = Choice(FREEZE_OPTIONS)(cfg.model.get("freeze", "none"))
    if problem:
        raise ConfigError(f"model.freeze={show(cfg.model.get('freeze'))}: {problem}")
    source = cfg.model.get("init_from")
    if source and not str(source).startswith(("runs:/", "models:/")) and not Path(source).exists():
        raise ConfigError(f"model.init_from={source}: no such file or folder")
    norm = (cfg.model.get("norm") or {}).get("type", "none")
    if norm != "none" and cfg.features.get("top_db") is not None:
        raise ConfigError(f"model.norm.type={norm}: needs features.top_db=null (features.top_db="
                          f"{show(cfg.features.top_db)}): choose one input normalisation")
    specs = []
    for index, block in enumerate(cfg.model.get("blocks") or []):
        try:
            specs.append(BlockSpec.from_config(OmegaConf.to_container(block, resolve=True)))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model.blocks[{index}]: {error}") from None
    if not specs:
        raise ConfigError("model.blocks: empty; a model needs at least one conv block")
    try:
        trace_shapes(specs, (cfg.features.n_bins, cfg.features.window_frames))
    except ShapeError as error:
        raise ConfigError(f"{error} (input {cfg.features.n_bins} bins x {cfg.features.window_frames} frames)") from None
    from audiocnn.models.budget import model_cost

    model_settings = OmegaConf.to_container(cfg.model, resolve=True)
    problem, _ = model_cost(MODEL_CLASSES[cfg.model._target_], model_settings, 2,
                            cfg.features.n_bins, cfg.features.window_frames, cfg.features.get("top_db"))
    if problem and not problem.startswith("does not build"):  # too big: refused before anything is allocated
        raise ConfigError(problem)
    import torch

    from audiocnn.models import build_model

    try:  # building and one forward pass are cheap (within the budget) and check every other model option
        model = build_model(model_settings, n_classes=2, n_bins=cfg.features.n_bins,
                            top_db=cfg.features.get("top_db")).eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, cfg.features.n_bins, cfg.features.window_frames))
    except Exception as error:  # noqa: BLE001 - hydra wraps the constructor's error; report its cause
        cause = error.__cause__ or error
        raise ConfigError(f"model: {str(cause).splitlines()[0]}") from None


def validate_data(cfg: DictConfig) -> None:
    """The `data` group against its source's schema (`data.sources.parse_data`: each key's type and
    range, the keys checked together, the folder, file and regex it names)."""
    from audiocnn.data.prepare import prepare_settings

    prepare_settings(cfg)
