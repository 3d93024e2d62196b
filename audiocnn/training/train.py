"""The train stage: prepared manifest + feature store -> best checkpoint, `model.pt`, an MLflow run.

Writes to `paths.models`: `best.ckpt` (Lightning, best validation loss), `model.pt` (the
bundle: weights + the configs that rebuild the model, see `audiocnn.models.bundle`) and
`run.json` (the MLflow run the evaluate stage adds its test metrics to; the settings'
fingerprint and the code it was made with). While it trains, `last.ckpt` and `resume.json`:
a rerun after a kill or crash resumes from them in the same MLflow run (`resume`). Its inputs must
exist: a missing manifest or feature store is an error naming the stage that makes it
(`audiocnn.experiment` makes them for Hydra runs). Logging the servable model is not done
here but by the orchestration layer (`audiocnn.experiment.log_servable_model`).
With `trainer.calibrate=temperature` the stage then fits a temperature on the validation clips
(`training.temperature`) and stores it in `model.pt`; the weights are the same. On multi-label
data (classes.json's `task`) the model is trained with a sigmoid per class (`Classifier`), and
per-class thresholds fitted on the validation clips (`training.thresholds`) are stored in `model.pt`.
On event data (`task: events`, docs/events.md) the model must be a CRNN (another is refused before any
work): its frame outputs are trained on the windows' frame targets and its event pooling on the clips'
labels (`training.events`), `model.pt` records `task: events`, the model's `clip_output: event_pool`
(its clips are scored by the event pooling) and `events` (`time_stride`, `frame_seconds`, and the
decoding of frames into events fitted on the val split, `training.event_postprocessing`).
With several processes (`trainer.strategy=ddp trainer.devices=N`, `audiocnn.training.distributed`)
every process runs the same fit and validation; only the main one logs to MLflow and
writes `model.pt` and `run.json` (Lightning writes `best.ckpt` from rank 0 only).

The MLflow run is Lightning's: its MLflow logger (`training.run.RunLogger`) creates the run (or opens the resumed
one) as `trainer.fit` sets up and ends it as `fit` returns (FINISHED) or raises (FAILED). The stage's
own work around it is in callbacks: `training.run.RunLifecycle` tags the run with its owner process, takes over a
resumed run, logs the run's inputs and, on an exception, why the run failed; `AfterFit` does the
post-fit work (the best weights validated, the temperature / thresholds / event decoding fitted,
model.pt and run.json written) in Lightning's `teardown` hook, the last before the logger ends the run.
So the run is FINISHED only once model.pt is written, and a killed stage leaves it RUNNING for
`tracking.configure` to mark KILLED. When fitting had ended before a kill, the rerun runs Lightning's
`validate` of the best weights instead of `fit`, with the same callbacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from audiocnn import atomic, tracking
from audiocnn.data.events import output_frame_seconds
from audiocnn.data.prepare import PrepareSettings, is_prepared
from audiocnn.errors import ConfigError, InputError, MissingInputError
from audiocnn.features.cqt import pick_device
from audiocnn.features.featurize import store_problem
from audiocnn.features.settings import FeatureSettings, StoreSettings
from audiocnn.models import build_frontend, build_model
from audiocnn.models.bundle import load_state, save_bundle
from audiocnn.models.event_pool import capped_time_stride, time_stride
from audiocnn.models.scorer import WindowScorer
from audiocnn.models.settings import CNNSettings, CRNNSettings
from audiocnn.models.summary import summarize
from audiocnn.training import distributed, resume
from audiocnn.training.augment import AugmentSettings, SpectrogramAugment, WaveformAugment
from audiocnn.training.datamodule import LoaderSettings, WindowDataModule
from audiocnn.training.event_postprocessing import fit_on_split
from audiocnn.training.events import (OFF_FOR_EVENTS, SCORE as EVENTS_SCORE, EventClassifier, check_event_model,
                                     class_pos_weights)
from audiocnn.training.module import Classifier
from audiocnn.training.norm_stats import fit_bin_norm
from audiocnn.training.optim import OptimizerSettings, SchedulerSettings, class_weights
from audiocnn.training.resume import BEST
from audiocnn.training.run import RunLifecycle, RunLogger, log_run_inputs, run_logger
from audiocnn.training.settings import TrainerSettings
from audiocnn.training.temperature import calibrate
from audiocnn.training.thresholds import fit_thresholds
from audiocnn.training.trainer import build_trainer, swa_average, validate_best
from audiocnn.training.transfer import freeze, load_matching


def check_inputs(job: TrainJob) -> None:
    """Raise `MissingInputError` naming the stage to run when the manifest or the store is missing, and
    `StoreError` naming the shard when a shard's size is not the one recorded when it was written."""
    if not is_prepared(job.prepare):
        raise MissingInputError(f"paths.prepared={job.prepare.prepared}: no manifest for these data settings; run "
                                "the prepare stage first (`dvc repro prepare` or `audiocnn prepare`)")
    problem = None if job.features.on_the_fly else store_problem(job.store)
    if problem is not None:
        raise problem  # missing (MissingInputError) or a shard not of its recorded size (StoreError)


@dataclass(frozen=True)
class TrainJob:
    """The train stage's inputs, read once from the composed config (`audiocnn.experiment.train_job`).

    `prepare` (the manifest trained on), `store` (the feature store and the front-end), `loader`
    (batches, workers, sampler, seed), `tracking` (the MLflow store, checked), and the `trainer`, `model`,
    `optimizer`, `scheduler` and `augment` groups. `config` is the whole resolved config: the run's params
    and the resume fingerprint (`resume.settings`). `models`: `paths.models`; `run_name`: `tracking.run_name`.
    """
    prepare: PrepareSettings
    store: StoreSettings
    loader: LoaderSettings
    tracking: tracking.Store
    models: Path
    run_name: str | None
    trainer: TrainerSettings
    model: CNNSettings | CRNNSettings
    optimizer: OptimizerSettings
    scheduler: SchedulerSettings
    augment: AugmentSettings
    config: Mapping

    @property
    def features(self) -> FeatureSettings:
        return self.store.features


def build_module(job: TrainJob, model: torch.nn.Module, data: WindowDataModule) -> Classifier:
    """The LightningModule with the run's loss options, schedule and (training-only) augmentation."""
    n_classes, augment, features = len(data.classes), job.augment, job.features
    weights = class_weights(data.labels[data.rows("train")], n_classes, job.trainer.class_weights)
    transforms = augment.transforms
    if data.events_task:
        transforms = event_transforms(transforms)
    options = dict(
        scheduler=job.scheduler,
        augment=SpectrogramAugment(transforms, n_classes, math.log(features.amin), features.bins_per_octave),
        waveform_augment=WaveformAugment(augment.waveform if features.on_the_fly else None, features.sr),
        label_smoothing=job.trainer.label_smoothing, class_weights=weights,
    )
    if data.events_task:
        frame_weights = None
        if weights is not None:  # pos_weight of the clip term and of the frame term
            strong = [row for row in data.rows("train") if data.strong[row]]
            frame_seconds = data.time_stride * features.hop_length / features.sr
            options["class_weights"], frame_weights = class_pos_weights(
                data.labels[data.rows("train")], [data.clip_events[row] for row in strong], data.durations[strong],
                frame_seconds, data.classes)
        return EventClassifier(model, job.optimizer, n_classes, frame_weight=job.trainer.frame_loss_weight,
                               frame_class_weights=frame_weights, **options)
    return Classifier(model, job.optimizer, n_classes, multilabel=data.multilabel, **options)


def event_transforms(transforms):
    """`augment.transforms` for the events task: those that move time (`training.events.OFF_FOR_EVENTS`)
    left out, saying so (they would misalign the frame targets)."""
    transforms = dict(transforms or {})
    off = [name for name in OFF_FOR_EVENTS if name in transforms]
    if off:
        print(f"train: augment.transforms.{off[0]}: off for the events task (it would move the windows against "
              "their frame targets; the random crops move the events already)")
    return {name: value for name, value in transforms.items() if name not in off}


def check_events_settings(settings: Mapping, model: torch.nn.Module) -> None:
    """The events task's refusals, before any work: a model without frame outputs, a `model.clip_output`
    other than `event_pool` (`settings`: the `model` group)."""
    check_event_model(model, settings.get("name", settings.get("_target_")))
    if settings.get("clip_output", "event_pool") != "event_pool":
        raise ConfigError(f"model.clip_output={settings['clip_output']}: the events task scores clips by the event "
                          "pooling it trains; leave model.clip_output out (or set it to event_pool)")


def events_model_settings(model: dict) -> dict:
    """The model config (a plain mapping) an events model is built with: its blocks' time pooling capped at
    `model.event_time_stride` (`models.event_pool.capped_time_stride`; a CNN's blocks as written, it is
    refused after)."""
    cap = model.get("event_time_stride")
    try:
        blocks = capped_time_stride(model.get("blocks") or [], cap)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return {**model, "blocks": blocks} if cap is not None else model


def event_settings(features: FeatureSettings, model: torch.nn.Module) -> dict:
    """What model.pt records for an events model (`events`): its output frames' time stride and seconds."""
    stride = time_stride(model.specs)
    return {"time_stride": stride, "frame_seconds": output_frame_seconds(features.hop_length, features.sr, stride)}


def initial_weights(settings: CNNSettings | CRNNSettings, model: torch.nn.Module):
    """Load `model.init_from` into `model` (matching names and shapes); None without it.

    A source of which no tensor fits is an error: training would silently start from scratch.
    """
    source = settings.init_from
    if not source:
        return None
    transfer = load_matching(model, load_state(source))
    if not transfer.loaded:
        raise InputError(f"model.init_from={source}: none of its {len(transfer.skipped)} tensors fits "
                         f"model={settings.name} (names or shapes differ); nothing to start from")
    print(f"train: model.init_from={source}: {transfer.describe()}")
    return transfer


def fit_calibration(model: torch.nn.Module, data: WindowDataModule, features: FeatureSettings, logger: RunLogger
                    ) -> float:
    """`trainer.calibrate=temperature`: T fitted on the val split's sliding windows, logged to the run."""
    temperature, before, after = calibrate(model, data.sliding_dataloader("val"), pick_device(features.device))
    logger.log_metrics({"temperature": temperature, "val_nll_uncalibrated": before, "val_nll_calibrated": after})
    print(f"train: trainer.calibrate=temperature: T={temperature:.4f} on {len(data.rows('val'))} val clips, "
          f"val NLL {before:.4f} -> {after:.4f}")
    return temperature


def fit_class_thresholds(model: torch.nn.Module, data: WindowDataModule, features: FeatureSettings,
                         logger: RunLogger) -> list[float] | None:
    """Multi-label data: each class's threshold of best F1 on the val clips, logged to the run (None when
    the val split is empty: every class then keeps 0.5 at scoring time)."""
    if len(data.rows("val")) == 0:
        print("train: the val split has no clips; the classes' thresholds stay 0.5")
        return None
    scorer = WindowScorer(model, floor=math.log(features.amin), multilabel=True)
    thresholds, _, _ = fit_thresholds(scorer, data.sliding_dataloader("val"), pick_device(features.device))
    logger.experiment.log_dict(logger.run_id, dict(zip(data.classes, thresholds)), "thresholds.json")
    print(f"train: per-class thresholds of best F1 on {len(data.rows('val'))} val clips "
          f"(from {min(thresholds):.3f} to {max(thresholds):.3f}), stored in model.pt")
    return thresholds


def fit_event_decoding(model: torch.nn.Module, data: WindowDataModule, job: TrainJob, events: dict,
                       logger: RunLogger) -> dict:
    """Events task: `events` with the decoding fitted on the val split's strong clips
    (`training.event_postprocessing`), logged to the run; unchanged (0.5, no filter at scoring time) when
    the val split has no strong clip."""
    trainer = job.trainer
    fitted = fit_on_split(model, data, "val", events["time_stride"], events["frame_seconds"],
                          pick_device(job.features.device), list(trainer.event_median_frames),
                          trainer.event_min_duration, trainer.event_min_gap)
    if fitted is None:
        print("train: the val split has no strong clip; event decoding stays at threshold 0.5 without a filter")
        return events
    post, f1 = fitted
    record = {"thresholds": list(post.thresholds), "median_frames": list(post.median_frames),
              "min_duration": post.min_duration, "min_gap": post.min_gap}
    logger.experiment.log_dict(logger.run_id, {**record, "val_event_f1": dict(zip(data.classes, f1))},
                               "event_decoding.json")
    logger.log_metrics({"val_event_f1": round(sum(f1) / len(f1), 4)})
    print(f"train: event decoding fitted on the val split's strong clips: median filters {record['median_frames']} "
          f"frames, thresholds {min(post.thresholds):.3f}..{max(post.thresholds):.3f}; val event-based F1 "
          f"{sum(f1) / len(f1):.4f} macro; stored in model.pt")
    return {**events, "post_processing": record}


class AfterFit(Callback):
    """The train stage's work after fitting, in Lightning's `teardown` hook: the last one before Lightning's
    logger ends the run, so the run is FINISHED only once model.pt and run.json are written, and FAILED
    (`RunLifecycle`) when this raises. In every process: the best checkpoint (or SWA's average) into the
    model and its validation (`validate_best`; collective). In the main one (the one with a logger): the
    temperature, the multi-label thresholds or the event decoding fitted on the val split, `model.pt`,
    `run.json` (`summary`, also what `train` returns) and `resume.finish`.

    `finish(trainer, best_val, epochs)` does the main process's part. After a fit (`stage="fit"`) the best weights are
    loaded here and validated; when fitting had ended before (`train` then runs Lightning's `validate` of
    the best weights), that validation's figures are taken."""

    def __init__(self, job: TrainJob, model: torch.nn.Module, checkpoint: ModelCheckpoint, start: resume.Start,
                 finish: Callable[[L.Trainer, dict, int], dict] | None):
        self.job, self.model, self.checkpoint, self.start, self.finish = job, model, checkpoint, start, finish
        self.summary: dict = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "validate":  # fitting had ended: `train` validated the best weights
            best_val = {k: float(v) for k, v in trainer.callback_metrics.items()}
            epochs = self.start.epochs
        else:
            epochs = min(trainer.current_epoch, self.job.trainer.max_epochs)  # not SWA's extra BatchNorm pass
            if trainer.world_size > 1:
                print(f"train: process {trainer.global_rank} of {trainer.world_size}: {trainer.global_step} optimizer "
                      f"steps over {trainer.current_epoch} epochs, {trainer.num_training_batches} batches per epoch")
            if trainer.logger is not None:
                resume.record(self.job.config, self.job.models, trainer.logger.run_id, fit_done=True, epochs=epochs)
            if not swa_average(trainer, pl_module):
                self.model.load_state_dict(load_state(self.checkpoint.best_model_path or self.job.models / BEST))
            best_val = validate_best(self.job.trainer, pl_module, trainer.datamodule)
            if trainer.logger is not None:
                trainer.logger.log_metrics(best_val, step=trainer.global_step)
        if self.finish is not None:
            self.summary = self.finish(trainer, best_val, epochs)


def train(job: TrainJob, run_name_suffix: str = "", parent_run_id: str | None = None) -> dict:
    """Fit `job.model` on the train split, early-stopped on validation loss; return a summary.
    The MLflow run (Lightning's logger's, `RunLogger`) is a child of `parent_run_id` when given (a sweep's,
    a repeat's).

    A rerun in the same `paths.models` with the same settings resumes where a killed one stopped
    (`resume.plan`); `trainer.resume=false` starts afresh. In a DDP process other than the main
    one: the same fit (from the checkpoint the main one chose, `resume.follow`), nothing logged
    or written; returns {}.
    """
    check_inputs(job)
    out, features, model_name = job.models, job.features, job.model.name
    out.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main_process()
    start = resume.plan(job.config, out, job.tracking) if main else resume.follow(out)
    if start.message:
        print(f"train: {start.message}")
    L.seed_everything(job.loader.seed, workers=True)
    data = WindowDataModule(job.store, job.loader)
    calibrating = job.trainer.calibrate == "temperature"
    if calibrating and data.multilabel:
        raise ConfigError("trainer.calibrate=temperature: not for multi-label data (one softmax temperature); "
                          "its per-class thresholds are fitted on the val split instead: set trainer.calibrate=none")
    if calibrating and len(data.rows("val")) == 0:
        raise ConfigError("trainer.calibrate=temperature: the val split has no clips to fit the temperature on; "
                          "give it clips (data.val_fraction) or set trainer.calibrate=none")
    model_cfg = job.model.config()  # what model.pt keeps
    if data.events_task:
        model_cfg = events_model_settings(model_cfg)
    front_end = job.config["features"]  # as written: the front-end settings model.pt keeps
    model = build_model(model_cfg, len(data.classes), features.n_bins, features.top_db,
                        frontend=build_frontend(front_end))  # the CQT on the fly, else identity
    events = None
    if data.events_task:
        check_events_settings(model_cfg, model)
        model.clip_output = model_cfg["clip_output"] = "event_pool"  # clips scored as the event pooling trains them
        events = event_settings(features, model)
        data.time_stride = events["time_stride"]
    transfer = None if start.from_last else initial_weights(job.model, model)  # else the checkpoint has them
    freeze(model, job.model.freeze)
    fit_bin_norm(model, data)  # model.norm.type=bin_norm: the train split's per-bin mean and std
    module = build_module(job, model, data)

    logger, callbacks, finish = None, [], None
    if main:
        name = tracking.default_run_name(job.run_name, model_name, job.store.data_name, run_name_suffix)
        tags = tracking.run_tags(job.store.data_name, model_name, job.prepare.prepared)
        tracking.configure(job.tracking)  # the experiment, and runs of dead processes marked KILLED
        logger = run_logger(job.tracking, start.run_id, name, tags, parent_run_id)
        summary_table = summarize(model, features.n_bins, features.window_frames, name=model_name)
        callbacks.append(RunLifecycle(job.config, out, start, tags, parent_run_id, lambda logger: log_run_inputs(
            job.config, job.prepare.prepared, job.store.data_name, logger, summary_table, transfer)))

        def finish(trainer: L.Trainer, best_val: dict, epochs: int) -> dict:
            """The main process's post-fit work (`AfterFit`), inside the run."""
            nonlocal events
            temperature = fit_calibration(model, data, features, logger) if calibrating else 1.0
            thresholds = fit_class_thresholds(model, data, features, logger) if data.multilabel else None
            if events:
                events = fit_event_decoding(model, data, job, events, logger)
            save_bundle(model.eval().cpu(), model_cfg, dict(front_end), data.classes, out / "model.pt",
                        temperature=temperature, task=data.task, thresholds=thresholds, events=events)
            # what the run is ranked by
            score = EVENTS_SCORE if data.events_task else "val_map" if data.multilabel else "val_acc"
            summary = {
                "run_id": logger.run_id, "experiment_id": logger.experiment_id,
                "tracking_uri": tracking.redact(job.tracking.uri), "run_name": name,
                "best_val_loss": best_val["val_loss"], f"best_{score}": best_val[score], "epochs": epochs,
                "n_parameters": summary_table.total_params, "multiply_adds": summary_table.total_macs,
                "processes": trainer.world_size, "train_steps": trainer.global_step,  # optimizer steps of each process
                "fingerprint": resume.fingerprint(job.config), "code": resume.code_digest(),
                "temperature": temperature, "task": data.task, **({"events": events} if events else {}),
            }
            logger.log_metrics({"best_val_loss": summary["best_val_loss"], f"best_{score}": summary[f"best_{score}"]})
            atomic.write_json(out / "run.json", summary)
            resume.finish(job.config, out, logger.run_id)
            print(f"train: best val_loss {summary['best_val_loss']:.4f}, {score} {summary[f'best_{score}']:.4f} "
                  f"after {summary['epochs']} epochs; MLflow run {summary['run_id']} ({name})")
            return summary

    trainer, checkpoint = build_trainer(job.trainer, out, logger, tuple(callbacks))
    after = AfterFit(job, model, checkpoint, start, finish)
    trainer.callbacks.append(after)
    if start.fit_done:  # only the model file was left to write: validate the best weights, then AfterFit
        model.load_state_dict(load_state(out / BEST))
        trainer.validate(module, datamodule=data, verbose=False)
    else:
        trainer.fit(module, datamodule=data, ckpt_path="last" if start.from_last else None)
    summary = after.summary
    if not summary:  # a DDP process other than the main one
        return {}
    url = tracking.ui_url(summary["tracking_uri"], summary["experiment_id"], summary["run_id"])
    if url:
        print(f"train: in the MLflow UI: {url}")
    return summary
