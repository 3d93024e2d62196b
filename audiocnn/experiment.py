"""Orchestration: the one place that composes the stages into experiments.

The stages each read their inputs and write their outputs (prepare, featurize, train,
evaluate: `audiocnn.data`, `.features`, `.training`, `.evaluation`). This module decides
what runs around them:
- `train_stage` / `evaluate_stage`: what `dvc repro` runs (`pipelines/train.py --params`,
  `pipelines/evaluate.py --params`): one model, or every fold/seed variant (`repeats`).
- `run_experiment`: one Hydra job (`python pipelines/train.py model=cnn`, sweeps with `-m`):
  makes missing inputs (prepare, featurize), trains, logs the servable model, evaluates,
  writing into the job's own output folder so sweeps never overwrite each other or the
  DVC-tracked `data/models` and `metrics/`.
- `train_model` = the train stage + the servable model logged to its MLflow run
  (`tracking.log_model`); `evaluate_model` = one model, or `ensemble=[...]`.
Under DDP (`trainer.devices=N`, torchrun, SLURM; `audiocnn.training.distributed`) every
process runs the same trainings; only the main one opens runs, writes outputs and
evaluates, and makes missing inputs while the others wait. A Hydra job that trains in
several processes runs DVC's train stage (`pipelines/train.py --params`) in processes of
its own (`train_in_processes`): Lightning re-runs the command of its main process for the
others, which for a Hydra job would be the whole sweep.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from hydra.types import RunMode
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from audiocnn import atomic, repeats, sweep, tracking
from audiocnn.config import REPO_ROOT
from audiocnn.data.prepare import is_prepared, prepare
from audiocnn.errors import StageFailed
from audiocnn.evaluation.ensemble import evaluate_ensemble
from audiocnn.evaluation.evaluate import EvaluateJob, evaluate
from audiocnn.features.budget import classes_problem
from audiocnn.features.featurize import featurize, is_featurized
from audiocnn.inference.export import export_model
from audiocnn.inference.pyfunc import log_audio_model, model_config
from audiocnn.training import distributed, resume
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.settings import trainer_settings
from audiocnn.training.train import TrainJob, train
from audiocnn.training.trainer import planned_processes
from audiocnn.settings import Settings, group, prepare_settings, read_settings


@dataclass(frozen=True)
class Job:
    """One job: its composed config (`cfg`, which the orchestration passes on: to a variant, to the
    processes of a DDP training), its settings read once (`audiocnn.settings.read_settings`) and its
    MLflow store checked once (`resolve_tracking`)."""
    cfg: DictConfig
    settings: Settings
    store: tracking.Store


def job_of(cfg: DictConfig, store: tracking.Store | None = None, settings: Settings | None = None) -> Job:
    """`cfg` as a `Job`: the MLflow store checked first (with `tracking.required=false` and a server that does
    not answer, the local store the run's params then record), then every setting read. `store`: the one
    already checked for this `tracking` group (a variant of a repeated experiment: its parent's); `settings`:
    `cfg`'s, already read (`validate_config` in `config.stage_main`), read again only if the store moved."""
    uri = cfg.tracking.uri
    store = store or resolve_tracking(cfg)
    return Job(cfg, settings if settings is not None and cfg.tracking.uri == uri else read_settings(cfg), store)


def ensure_inputs(settings: Settings) -> None:
    """Run prepare / featurize when their outputs are missing or were made for other settings
    (a DDP process other than the main one waits for the main one to make them)."""
    job, store = settings.prepare(), settings.store()
    if not distributed.is_main_process():
        distributed.wait_for(lambda: is_prepared(job) and (store.features.on_the_fly or is_featurized(store)),
                             f"the manifest in {job.prepared} and the feature store")
        return
    if not is_prepared(job):
        prepare(job, classes_problem=classes_problem)
    if not store.features.on_the_fly and not is_featurized(store):
        featurize(store)


def served_config(cfg: DictConfig) -> dict:
    """The logged model's `model_config` for `cfg`: its request limits (`serving`) and test-time views
    (`evaluate.tta`), which are not training settings: a change to them logs the model again."""
    serving, tta = cfg.get("serving"), (cfg.get("evaluate") or {}).get("tta")
    return model_config(*(OmegaConf.to_container(node, resolve=True) if node is not None else None
                          for node in (serving, tta)))


def train_job(job: Job) -> TrainJob:
    """The train stage's input for `job`."""
    settings = job.settings
    return TrainJob(settings.prepare(), settings.store(), settings.loader(), job.store, Path(settings.run.paths.models),
                    settings.tracking.run_name, settings.trainer, settings.model, settings.optimizer,
                    settings.scheduler, settings.augment, settings.config)


def evaluate_job(job: Job) -> EvaluateJob:
    """The evaluate stage's input for `job`."""
    settings, paths = job.settings, job.settings.run.paths
    return EvaluateJob(Path(paths.models), Path(paths.metrics), settings.store(), settings.loader(),
                       settings.evaluate, job.store, settings.model.name, settings.data.name,
                       tuple(settings.run.ensemble))


def data_module(cfg: DictConfig, time_stride: int | None = None) -> WindowDataModule:
    """The loaders of `cfg`'s windows (`training.datamodule.WindowDataModule` of its feature store and
    loader settings)."""
    settings = read_settings(cfg)
    return WindowDataModule(settings.store(), settings.loader(), time_stride)


def processes_of(cfg: DictConfig) -> int:
    """How many processes `cfg`'s training runs in (`training.trainer.planned_processes`)."""
    return planned_processes(trainer_settings(group(cfg, "trainer")))


def resolve_tracking(cfg: DictConfig) -> tracking.Store:
    """The job's MLflow store, checked before any work (`tracking.store_of`: a server that does not answer
    ends the job). With `tracking.required=false` and such a server it is the local store, written into
    `cfg.tracking.uri`: the job's later steps use it without waiting for the server again."""
    store = tracking.store_of(cfg.tracking)
    if store.uri != tracking.anchored(cfg.tracking.uri):
        cfg.tracking.uri = store.uri
    return store


def log_servable_model(job: Job, summary: dict) -> dict:
    """Log `<paths.models>/model.pt` as the training run's pyfunc (raw audio in, probabilities out;
    `audiocnn.inference.pyfunc`) with `served_config(cfg)`, registered as `tracking.registered_model`;
    record its URI and config in run.json."""
    out, registered = Path(job.settings.run.paths.models), job.settings.tracking.registered_model
    config = served_config(job.cfg)
    with tracking.open_run(job.store, run_id=summary["run_id"]):
        info = log_audio_model(out / "model.pt", registered, config, task=summary.get("task"))
    summary = {**summary, "model_uri": info.model_uri, "model_config": config}
    if info.registered_model_version:
        summary["registered_model"] = f"models:/{registered}/{info.registered_model_version}"
    atomic.write_json(out / "run.json", summary)
    return summary


def export_onnx(job: Job, summary: dict) -> dict:
    """`<paths.models>/model.onnx` (`audiocnn.inference.export`), logged with the training run."""
    out = Path(job.settings.run.paths.models)
    path = export_model(out / "model.pt", "onnx", out / "model.onnx")
    with tracking.open_run(job.store, run_id=summary["run_id"]):
        mlflow.log_artifact(str(path))
    return summary


def train_model(job: Job, run_name_suffix: str = "", skip_finished: bool = False,
                parent_run_id: str | None = None) -> dict:
    """Train one model (the train stage); with `tracking.log_model` log it servable, with
    `tracking.export_onnx` export and log `model.onnx`. `skip_finished`: a model `paths.models`
    already holds for these settings and this code is kept, not trained again (repeats and
    Hydra jobs rerun after a kill); only what was not done after its training is done.
    `parent_run_id`: the run the training run is a child of (a sweep's, a repeat's)."""
    settings = job.settings
    out = Path(settings.run.paths.models)
    summary = resume.finished(settings.config) if skip_finished else None
    if summary is None:
        summary = train(train_job(job), run_name_suffix=run_name_suffix, parent_run_id=parent_run_id)
    else:
        print(f"train: {out} already holds this training (MLflow run {summary['run_id']}); not trained again")
    if not distributed.is_main_process():  # another DDP process: it trained, the main one logs
        return summary
    onnx = out / "model.onnx"
    if settings.tracking.export_onnx and not (onnx.exists() and onnx.stat().st_mtime >=
                                              (out / "model.pt").stat().st_mtime):
        summary = export_onnx(job, summary)
    logged = "model_uri" in summary and summary.get("model_config") == served_config(job.cfg)
    return log_servable_model(job, summary) if settings.tracking.log_model and not logged else summary


def evaluate_model(job: Job) -> dict:
    """Test metrics of the model in `paths.models`, or of the ensemble `ensemble=[...]`."""
    inputs = evaluate_job(job)
    return evaluate_ensemble(inputs) if inputs.ensemble else evaluate(inputs)


def run_repeats(job: Job, steps: tuple[str, ...] = ("train", "evaluate"), run_name_suffix: str = "",
                make_inputs: bool = True, parent_run_id: str | None = None) -> dict:
    """Run `steps` for every fold/seed variant of `job` under one MLflow parent run, in its MLflow store.

    "train" opens the parent (recorded in `<paths.models>/repeats.json`; a rerun with the same
    settings reopens it and skips the variants already trained, `train_model(skip_finished=True)`)
    and, without "evaluate", ends it; an "evaluate"-only call (DVC's evaluate stage) reopens it.
    After "evaluate", the aggregate is written and logged. Returns it (`best_val_acc`: the mean
    over variants, what a sweep optimises).
    `make_inputs`: prepare and featurize `cfg` first when needed (not in DVC's train stage,
    whose inputs are the earlier stages'). Each variant has its own manifest (its `data.fold`
    and `seed`), prepared here; all share the feature store of `paths.prepared`'s clips.
    `parent_run_id`: the run the repeats' own parent run is a child of (a sweep's).
    """
    cfg, store = job.cfg, job.store
    if "train" in steps:
        if make_inputs:
            ensure_inputs(job.settings)
        todo = repeats.variants(cfg)
        prepare_variants(cfg, todo)  # all before the first fit, whose DDP processes re-run this
        if not distributed.is_main_process():  # another DDP process: the same fits, nothing else
            for variant in todo:
                train_model(job_of(repeats.variant_config(cfg, variant), store), run_name_suffix=run_name_suffix)
            return {}
        parent = repeats.start(cfg, todo, store, run_name_suffix)
        if parent_run_id:
            tracking.set_parent(store, parent, parent_run_id)
    else:
        parent, todo = repeats.resume_parent(cfg)
        tracking.reopen_run(store, parent)
    try:
        results = []
        for number, variant in enumerate(todo, 1):
            print(f"repeats: {variant.label} ({number}/{len(todo)})")
            single = repeats.variant_config(cfg, variant)
            if "train" in steps:
                single.tracking.run_name = repeats.variant_run_name(cfg, variant, run_name_suffix)
            variant_job = job_of(single, store)
            if "train" in steps:
                summary = train_model(variant_job, run_name_suffix=run_name_suffix, skip_finished=True,
                                      parent_run_id=parent)
            else:
                summary = json.loads((Path(single.paths.models) / "run.json").read_text())
            metrics = evaluate_model(variant_job) if "evaluate" in steps else {}
            scores = {"best_val_acc": repeats.validation_score(summary), **metrics}
            results.append(repeats.Finished(variant.label, scores, Path(single.paths.metrics),
                                            Path(single.paths.prepared)))
        if "evaluate" not in steps:  # the evaluate stage reopens the parent
            tracking.end_parent_run(store, parent, "FINISHED")
            return {"best_val_acc": float(np.mean([r.metrics["best_val_acc"] for r in results]))}
        aggregate = repeats.write_aggregate(results, Path(cfg.paths.metrics), f"{cfg.model.name} on {cfg.data.name}",
                                            job.settings.evaluate.calibration_bins)
        repeats.log_aggregate(MlflowClient(tracking.configure(store)), parent, Path(cfg.paths.metrics), aggregate)
    except BaseException as error:
        tracking.end_parent_run(store, parent, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED",
                                reason=f"{type(error).__name__}: {error}")
        raise
    tracking.end_parent_run(store, parent, "FINISHED")
    return aggregate


def prepare_variants(cfg: DictConfig, todo: list) -> None:
    """Each variant's manifest (its fold and seed), made by the main process; the others wait for them."""
    for variant in todo:
        job = prepare_settings(repeats.variant_config(cfg, variant))
        if not distributed.is_main_process():
            distributed.wait_for(lambda: is_prepared(job), f"the manifest of {variant.label}")
        elif not is_prepared(job):
            prepare(job, classes_problem=classes_problem)


def train_stage(cfg: DictConfig, settings: Settings | None = None) -> dict:
    """DVC's train stage: one model, or every variant when folds/seeds are repeated. `settings`: `cfg`'s,
    when already read (`config.stage_main`)."""
    job = job_of(cfg, settings=settings)
    if repeats.is_repeated(cfg):
        return run_repeats(job, steps=("train",), make_inputs=False)
    return train_model(job)


def evaluate_stage(cfg: DictConfig, settings: Settings | None = None) -> dict:
    """DVC's evaluate stage: one model's (or an ensemble's) test metrics, or the aggregate over the variants."""
    if not distributed.is_main_process():
        return {}
    job = job_of(cfg, settings=settings)
    if repeats.is_repeated(cfg) and not cfg.get("ensemble"):
        return run_repeats(job, steps=("evaluate",))
    return evaluate_model(job)


def run_experiment(cfg: DictConfig) -> float:
    """One Hydra job: inputs, train, evaluate `cfg`; returns the validation accuracy (what a sweep optimises).
    In a sweep, its runs are children of the sweep's parent run (`sweep.parent_run_id`), and a job that
    changes the split (`seed`, `data.*`) prepares its own manifest (`repeats.job_prepared`)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    output_dir = hydra.runtime.output_dir
    overrides = ",".join(o for o in hydra.overrides.task if not o.startswith(("model=", "data=")))
    cfg.paths.models = f"{output_dir}/model"
    cfg.paths.metrics = f"{output_dir}/metrics"
    if hydra.mode == RunMode.MULTIRUN:
        cfg.paths.prepared = str(repeats.job_prepared(Path(output_dir), list(hydra.overrides.task),
                                                      Path(cfg.paths.prepared)))
    job = job_of(cfg)  # before any work: a tracking server that does not answer ends the job
    parent = sweep.parent_run_id()
    if planned_processes(job.settings.trainer) > 1:
        ensure_inputs(job.settings)
        train_in_processes(cfg, Path(output_dir) / "train_params.yaml", overrides)
        if not distributed.is_main_process():  # a job started by torchrun / srun on every rank
            return 0.0
        if repeats.is_repeated(cfg):
            if parent:
                tracking.set_parent(job.store, repeats.resume_parent(cfg)[0], parent)
            return run_repeats(job, steps=("evaluate",))["best_val_acc"]
        summary = json.loads((Path(cfg.paths.models) / "run.json").read_text())
        if parent:
            tracking.set_parent(job.store, summary["run_id"], parent)
        evaluate_model(job)
        return repeats.validation_score(summary)
    if repeats.is_repeated(cfg):
        return run_repeats(job, run_name_suffix=overrides, parent_run_id=parent)["best_val_acc"]
    ensure_inputs(job.settings)
    summary = train_model(job, run_name_suffix=overrides, skip_finished=True, parent_run_id=parent)
    evaluate_model(job)
    return repeats.validation_score(summary)


def train_in_processes(cfg: DictConfig, params: Path, run_name_suffix: str = "") -> None:
    """DVC's train stage for `cfg` in a process of its own (`pipelines/train.py --params <params>`),
    from which Lightning starts the other DDP processes with the same command.

    The job's folder stays the only output folder (`params`, `model/`, `metrics/`); the run keeps
    the name and `hydra.overrides` tag it gets in-process; each job gets a fresh process group.
    """
    job = copy.deepcopy(cfg)
    job.tracking.run_name = repeats.run_name_of(cfg, run_name_suffix)
    atomic.write_text(params, OmegaConf.to_yaml(job))
    command = [sys.executable, str(REPO_ROOT / "pipelines" / "train.py"), "--params", str(params)]
    env = {**os.environ, tracking.HYDRA_OVERRIDES_ENV: tracking.hydra_overrides() or ""}
    print(f"train: {processes_of(cfg)} processes: {' '.join(command)}", flush=True)
    status = subprocess.call(command, env=env)
    if status != 0:
        raise StageFailed(f"train: `{' '.join(command)}` exited with status {status} (its output above says why)")
