"""MLflow: where runs go, how a run is opened and named, what it records.

Default store: `sqlite:///mlflow.db` at the repository root (`tracking.uri`);
`MLFLOW_TRACKING_URI` overrides it. A run records the flattened resolved config as
params, the git commit and the manifest checksum as tags.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
from omegaconf import DictConfig, OmegaConf

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
# A run opened while this is set becomes a child of that run (sweeps, folds, seeds).
PARENT_RUN_ENV = "AUDIOCNN_PARENT_RUN_ID"


def tracking_uri(cfg: DictConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """{"model.blocks": "[...]", "optimizer.lr": "0.001", ...}: dotted keys, lists kept whole."""
    flat: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)[:MAX_PARAM_LENGTH]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def default_run_name(cfg: DictConfig, suffix: str = "") -> str:
    """`<model>-<data>[-<overrides>]`, so runs are told apart in the MLflow UI table."""
    return cfg.tracking.get("run_name") or "-".join(p for p in (cfg.model.name, cfg.data.name, suffix) if p)


def configure(cfg: DictConfig) -> str:
    uri = tracking_uri(cfg)
    user_setting = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; undo that, or it would pass for
    # the user's setting and override the tracking.uri of every later config in this process.
    if user_setting is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    mlflow.set_experiment(cfg.tracking.experiment)
    return uri


@contextmanager
def open_run(cfg: DictConfig, *, run_id: str | None = None, run_name: str | None = None,
             tags: dict | None = None, parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with `run_id`, resume) a run; a run that raises is marked FAILED.

    A new run is the child of `parent_run_id`, or of `$AUDIOCNN_PARENT_RUN_ID` when that is set.
    """
    configure(cfg)
    parent = None if run_id else parent_run_id or os.environ.get(PARENT_RUN_ENV)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
        if parent:
            mlflow.set_tag("mlflow.parentRunId", parent)
        if tags:
            mlflow.set_tags(tags)
        try:
            yield run
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise


def start_parent_run(cfg: DictConfig, run_name: str, tags: dict | None = None) -> str:
    """Create a RUNNING run to group child runs (folds, seeds, sweep jobs) without making it active.

    It nests under `$AUDIOCNN_PARENT_RUN_ID` itself when that is set (a sweep of cross-validations).
    """
    configure(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    tags = {**(tags or {}), "mlflow.runName": run_name}
    if os.environ.get(PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    run = mlflow.MlflowClient().create_run(experiment.experiment_id, run_name=run_name, tags=tags)
    mlflow.MlflowClient().log_batch(run.info.run_id, params=[
        mlflow.entities.Param(k, v) for k, v in flatten_config(cfg).items()])
    return run.info.run_id


def end_parent_run(cfg: DictConfig, run_id: str, status: str = "FINISHED") -> None:
    configure(cfg)
    mlflow.MlflowClient().set_terminated(run_id, status=status)


@contextmanager
def children_of(run_id: str) -> Iterator[None]:
    """Runs opened inside this block (in this process or its children) nest under `run_id`."""
    previous = os.environ.get(PARENT_RUN_ENV)
    os.environ[PARENT_RUN_ENV] = run_id
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = previous


def run_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {"data": cfg.data.name, "model": cfg.model.name}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    manifest = Path(cfg.paths.prepared) / "manifest.csv"
    if manifest.exists():
        from audiocnn.features.store import file_md5

        tags["data.manifest_md5"] = file_md5(manifest)
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags
