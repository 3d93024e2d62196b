"""Config: compose `conf/` (Hydra), load `params.yaml` (DVC), validate before any work.

Both ways in end in the same resolved `DictConfig`, which `validate_config`
(`audiocnn.validation`) checks setting by setting; a bad one raises `ConfigError` whose message names the setting,
and `stage_main` prints it as one line and exits with status 2.
`MLFLOW_TRACKING_URI`, read once where the process starts (`user_tracking_uri`), replaces `tracking.uri`
(`with_tracking_uri`): below this layer the tracking URI travels in the config only.
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from audiocnn.errors import ConfigError, InputError, StageFailed
from audiocnn.tracking.names import redact
from audiocnn.validation import validate_config  # noqa: F401 - `audiocnn.config.validate_config` is the entry point

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


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of command-line `overrides`; one that is not Hydra syntax is a ConfigError naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, parsed = OverridesParser.create(), []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException:
            key, _, value = line.partition("=")
            raise ConfigError(f"{line}: not a valid Hydra override; quote a value with special characters "
                              f"inside the shell quotes: '{key}=\"{value}\"'") from None
    return parsed


def check_group_overrides(overrides: list[str]) -> None:
    """Fail on `group=option` overrides naming an option that has no yaml in conf/<group>/."""
    groups = config_groups()
    for override in parse_overrides(overrides):
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

    options = []
    for override in parse_overrides(overrides):
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


def user_tracking_uri() -> str | None:
    """`MLFLOW_TRACKING_URI` as the user set it: read where a process starts, before MLflow's
    `set_tracking_uri` (which exports the variable itself) has run in it."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def with_tracking_uri(cfg: DictConfig, uri: str | None) -> DictConfig:
    """`cfg` with `tracking.uri=uri` when `uri` is given (the user's `MLFLOW_TRACKING_URI` wins)."""
    if uri:
        cfg.tracking.uri = uri
    return cfg


def stage_main(stage: Callable[..., object], hydra_task: Callable[[DictConfig], object] | None = None):
    """Entry point of a `pipelines/*.py` file.

    `--params FILE` (how dvc.yaml calls it): load FILE, validate, run `stage(cfg, settings)` with the
    settings validation read.
    Otherwise: Hydra command line (`key=value` overrides, `-m` sweeps) composed from conf/.
    Every job a sweep will run is validated before the first starts (a bad job fails the
    sweep before any work), and only once: the jobs validated here are handed to the job
    function (`_hydra_main`), which skips them; jobs the sweeper makes up as it goes (Optuna's
    intervals) are validated when they start. Each job is passed to `hydra_task` (default: `stage`).
    """
    argv = sys.argv[1:]
    tracking_uri = user_tracking_uri()
    validated = set()
    try:
        if argv[:1] == ["--params"]:
            cfg = with_tracking_uri(load_params(argv[1] if len(argv) > 1 else "params.yaml"), tracking_uri)
            settings = validate_config(cfg)  # read once: the stage takes them
            return _run(lambda config: stage(config, settings), cfg)
        for overrides in expand_sweep([a for a in argv if not a.startswith("-")]):
            job = compose_config(overrides)
            validated.add(_job_key(job))
            validate_config(with_tracking_uri(job, tracking_uri))
    except InputError as error:
        _exit_with(error)
    _hydra_main(hydra_task or stage, frozenset(validated), tracking_uri)


def _job_key(cfg: DictConfig) -> str:
    """A job's identity: its resolved config (the same however its overrides were spelled)."""
    return hashlib.sha1(OmegaConf.to_yaml(cfg, resolve=True).encode()).hexdigest()[:16]


def _run(task: Callable[[DictConfig], object], cfg: DictConfig):
    """`task(cfg)`. A bad setting or bad data exits as `_exit_with` says. Any other error has its traceback
    printed with URI user info redacted (MLflow's REST errors name the tracking URI as given, credentials
    included: `http://user:password@host`) and is raised again as `StageFailed` holding its redacted line,
    without the original: a sweep's other jobs still run (Hydra raises a job's error after the sweep), and
    a `--params` stage exits 1 with that line."""
    try:
        return task(cfg)
    except InputError as error:
        _exit_with(error)
    except Exception as error:
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        first = str(error).splitlines()[0] if str(error) else ""
        raise StageFailed(redact(f"{type(error).__name__}: {first}")) from None


def _exit_with(error: InputError):
    """A bad setting (found before any work) exits 2; bad data found while working exits 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2 if isinstance(error, ConfigError) else 1)


def _hydra_main(task: Callable[[DictConfig], object], validated: frozenset[str], tracking_uri: str | None):
    """Run Hydra's command line with `task` per job. `validated`: the `_job_key`s of the jobs already
    validated; `tracking_uri`: the user's MLFLOW_TRACKING_URI. Both travel with the job function
    (a launcher that runs jobs in other processes, joblib's, pickles it with them)."""
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base=None)
    def run(cfg: DictConfig):
        OmegaConf.resolve(cfg)
        try:
            known = _job_key(cfg) in validated
            cfg = with_tracking_uri(cfg, tracking_uri)
            if not known:
                validate_config(cfg)
        except InputError as error:
            _exit_with(error)
        return _run(task, cfg)

    run()
