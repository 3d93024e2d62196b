"""Config: compose `conf/` (Hydra), load `params.yaml` (DVC), validate before any work.

Both ways in end in the same resolved `DictConfig`, which `validate_config` checks
setting by setting; a bad one raises `ConfigError` whose message names the setting,
and `stage_main` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from audiocnn.errors import ConfigError, InputError, ShapeError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
CONFIG_NAME = "config"


def config_groups() -> dict[str, list[str]]:
    """{group: [option, ...]} for every config group folder in conf/."""
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(CONF_DIR.iterdir())
        if group.is_dir() and not group.name.startswith((".", "_"))
    }


def check_group_overrides(overrides: list[str]) -> None:
    """Fail on `group=option` overrides naming an option that has no yaml in conf/<group>/."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = config_groups()
    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        if group not in groups or override.is_delete():
            continue
        choices = [str(v) for v in override.sweep_string_iterator()] if override.is_sweep_override() else [
            override.value()
        ]
        # a list selects several options of one group at once (augment=[specaugment,pitch_shift])
        choices = [str(c) for choice in choices for c in (choice if isinstance(choice, list) else [choice])]
        for choice in choices:
            if choice not in groups[group]:
                raise ConfigError(f"{group}={choice}: unknown {group} config; allowed: {', '.join(groups[group])}")


def expand_sweep(overrides: list[str], limit: int = 256) -> list[list[str]]:
    """The override lists of the jobs a `-m` sweep would run (the first `limit` of them).

    Choice and range sweeps are expanded; other sweeps (e.g. Optuna intervals) are left
    to the sweeper and checked per job.
    """
    from itertools import islice, product

    from hydra.core.override_parser.overrides_parser import OverridesParser

    options = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            try:
                options.append([f"{key}={v}" for v in override.sweep_string_iterator()])
            except Exception:  # noqa: BLE001 - not enumerable here (interval); the job validates it
                continue
        else:
            options.append([override.input_line])
    return [list(job) for job in islice(product(*options), limit)]


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose conf/config.yaml with `overrides`, resolved, exactly as DVC writes params.yaml."""
    from hydra import compose, initialize_config_dir

    check_group_overrides(list(overrides))
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def write_params(path: Path | str = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the composition of conf/ (plus `overrides`) to `path`, as `dvc exp run` does."""
    path = Path(path)
    path.write_text(OmegaConf.to_yaml(compose_config(overrides)), encoding="utf-8")
    return path


def load_params(path: Path | str = "params.yaml") -> DictConfig:
    """Load a params.yaml written by DVC or `write_params`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} not found; run `make params` or `dvc exp run`")
    return OmegaConf.load(path)


def _positive(cfg: DictConfig, key: str, kind: type = float) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or (
        kind is int and int(value) != value
    ):
        raise ConfigError(f"{key}={value}: must be a positive {'integer' if kind is int else 'number'}")


def _one_of(cfg: DictConfig, key: str, allowed: tuple) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value}: allowed: {', '.join(map(str, allowed))}")


def validate_features(cfg: DictConfig) -> None:
    for key in ("features.sr", "features.hop_length", "features.n_bins", "features.bins_per_octave",
                "features.window_frames", "features.batch_size"):
        _positive(cfg, key, int)
    _positive(cfg, "features.shard_mb")  # may be fractional (small shards in tests)
    _positive(cfg, "features.fmin")
    _positive(cfg, "features.amin")
    _positive(cfg, "features.chunk_seconds")
    if cfg.features.get("top_db") is not None:
        _positive(cfg, "features.top_db")
    for key in ("features.on_the_fly", "features.trainable", "features.verify"):
        _one_of(cfg, key, (True, False))
    if cfg.features.trainable and not cfg.features.on_the_fly:
        raise ConfigError("features.trainable=true: needs features.on_the_fly=true (stored frames are fixed)")
    _one_of(cfg, "features.device", ("auto", "cpu", "cuda"))
    f = cfg.features
    nyquist = f.sr / 2
    top = f.fmin * 2 ** ((f.n_bins - 1) / f.bins_per_octave)
    if top > nyquist:
        import math

        most = int(math.floor(f.bins_per_octave * math.log2(nyquist / f.fmin))) + 1
        raise ConfigError(
            f"features.n_bins={f.n_bins}: top bin {top:.0f} Hz is above Nyquist {nyquist:.0f} Hz "
            f"(features.sr={f.sr}); with features.fmin={f.fmin} at most {most} bins fit"
        )


def validate_model(cfg: DictConfig) -> None:
    from audiocnn.models.blocks import BlockSpec
    from audiocnn.models.shapes import trace_shapes

    from audiocnn.training.transfer import FREEZE_OPTIONS

    from audiocnn.models.bundle import MODEL_CLASSES

    if cfg.model.get("_target_") not in MODEL_CLASSES:  # what a model file may name when it is loaded back
        raise ConfigError(f"model._target_={cfg.model.get('_target_')}: not an audiocnn model; allowed: "
                          f"{', '.join(MODEL_CLASSES)} (choose a config from conf/model/)")
    _one_of(cfg, "model.freeze", FREEZE_OPTIONS)
    source = cfg.model.get("init_from")
    if source and not str(source).startswith(("runs:/", "models:/")) and not Path(source).exists():
        raise ConfigError(f"model.init_from={source}: no such file or folder")
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
    from audiocnn.models import build_model

    import torch

    try:  # building and one forward pass are cheap and check every other model option
        model = build_model(cfg.model, n_classes=2, n_bins=cfg.features.n_bins, top_db=cfg.features.get("top_db")).eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, cfg.features.n_bins, cfg.features.window_frames))
    except Exception as error:  # noqa: BLE001 - hydra wraps the constructor's error; report its cause
        cause = error.__cause__ or error
        raise ConfigError(f"model: {str(cause).splitlines()[0]}") from None


def validate_config(cfg: DictConfig) -> None:
    """Check every setting a stage relies on; raise `ConfigError` naming the first bad one."""
    from audiocnn.data.sources import SOURCES

    _one_of(cfg, "data.name", tuple(SOURCES))
    timeout = cfg.get("lock_timeout_s")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
        raise ConfigError(f"lock_timeout_s={timeout}: must be a number of seconds >= 0")
    validate_features(cfg)
    validate_model(cfg)
    _positive(cfg, "optimizer.lr")
    _positive(cfg, "optimizer.backbone_lr_scale")
    from audiocnn.evaluation.settings import validate_evaluate
    from audiocnn.training.augment import validate_augment
    from audiocnn.training.optim import validate_optimisation

    validate_augment(cfg)
    validate_optimisation(cfg)
    validate_evaluate(cfg)
    for key in ("trainer.max_epochs", "trainer.batch_size"):
        _positive(cfg, key, int)
    from audiocnn.data.sources import validate as validate_data

    validate_data(cfg.data)  # roots, downloads, CSV file, group regex, split scheme
    _one_of(cfg, "data.protocol", ("holdout", "cv"))
    if cfg.data.protocol == "cv" and cfg.data.get("fold") is not None:
        raise ConfigError(f"data.fold={cfg.data.fold} with data.protocol=cv: cv runs every fold; set one of them")
    seeds = cfg.trainer.get("seeds")
    if seeds is not None and (not OmegaConf.is_list(seeds) or not seeds or len(set(seeds)) != len(seeds)
                              or not all(isinstance(s, int) for s in seeds)):
        raise ConfigError(f"trainer.seeds={seeds}: a list of distinct integers such as [0,1,2], or null")
    if "val_fraction" in cfg.data:
        fractions = cfg.data.val_fraction + cfg.data.test_fraction
        if not 0 < fractions < 1:
            raise ConfigError(f"data.val_fraction + data.test_fraction = {fractions}: must be between 0 and 1")


def stage_main(stage: Callable[[DictConfig], object], hydra_task: Callable[[DictConfig], object] | None = None):
    """Entry point of a `pipelines/*.py` file.

    `--params FILE` (how dvc.yaml calls it): load FILE, validate, run `stage`.
    Otherwise: Hydra command line (`key=value` overrides, `-m` sweeps) composed from conf/.
    Every job a sweep will run is validated before the first starts (a bad job fails the
    sweep before any work), and only once: a job validated here is not validated again;
    jobs the sweeper makes up as it goes (Optuna's intervals) are validated when they start.
    Each job is passed to `hydra_task` (default: `stage`).
    """
    argv = sys.argv[1:]
    try:
        if argv[:1] == ["--params"]:
            cfg = load_params(argv[1] if len(argv) > 1 else "params.yaml")
            validate_config(cfg)
            return stage(cfg)
        for overrides in expand_sweep([a for a in argv if not a.startswith("-")]):
            job = compose_config(overrides)
            validate_config(job)
            _mark_validated(job)
    except InputError as error:
        _exit_with(error)
    _hydra_main(hydra_task or stage)


VALIDATED_ENV = "AUDIOCNN_VALIDATED_JOBS"  # jobs validated before the sweep (inherited by launcher processes)


def _job_key(cfg: DictConfig) -> str:
    """A job's identity: its resolved config (the same however its overrides were spelled)."""
    return hashlib.sha1(OmegaConf.to_yaml(cfg, resolve=True).encode()).hexdigest()[:16]


def _mark_validated(cfg: DictConfig) -> None:
    keys = set(filter(None, os.environ.get(VALIDATED_ENV, "").split(",")))
    os.environ[VALIDATED_ENV] = ",".join(sorted(keys | {_job_key(cfg)}))


def _was_validated(cfg: DictConfig) -> bool:
    return _job_key(cfg) in os.environ.get(VALIDATED_ENV, "").split(",")


def _exit_with(error: InputError):
    """A bad setting (found before any work) exits 2; bad data found while working exits 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2 if isinstance(error, ConfigError) else 1)


def _hydra_main(task: Callable[[DictConfig], object]):
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base=None)
    def run(cfg: DictConfig):
        OmegaConf.resolve(cfg)
        try:
            if not _was_validated(cfg):
                validate_config(cfg)
            return task(cfg)
        except InputError as error:
            _exit_with(error)

    run()
