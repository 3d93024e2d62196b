"""The train stage: feature store -> best checkpoint, `model.pt`, an MLflow run.

Writes to `paths.models`: `best.ckpt` (Lightning, best validation loss), `model.pt`
(weights + the configs needed to rebuild the model; loads with `weights_only=True`) and
`run.json` (the MLflow run the evaluate stage adds its test metrics to).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import mlflow
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from audiocnn import atomic, tracking
from audiocnn.data.prepare import is_prepared, prepare
from audiocnn.features.cqt import CQTFrontend
from audiocnn.features.featurize import featurize, is_featurized
from audiocnn.models import build_model
from audiocnn.models.summary import summarize
from audiocnn.serving import log_audio_model
from audiocnn.training.datamodule import StoreDataModule
from audiocnn.training.augment import SpectrogramAugment, WaveformAugment
from audiocnn.training.module import Classifier
from audiocnn.training.optim import class_weights, resolve_precision
from audiocnn.training.checkpoints import load_state
from audiocnn.training.transfer import freeze, load_matching


def ensure_inputs(cfg: DictConfig) -> None:
    """Run prepare / featurize if their outputs are missing or were made for other settings."""
    if not is_prepared(cfg):
        prepare(cfg)
    if not cfg.features.on_the_fly and not is_featurized(cfg):
        featurize(cfg)


def build_trainer(cfg: DictConfig, out: Path, run_id: str) -> tuple[L.Trainer, ModelCheckpoint]:
    """Lightning Trainer: early stopping on val_loss, best checkpoint kept as `out/best.ckpt`."""
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                                 enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        precision=resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"), deterministic=cfg.trainer.deterministic,
        log_every_n_steps=cfg.trainer.log_every_n_steps, default_root_dir=out,
        callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=cfg.trainer.patience), checkpoint],
        logger=MLFlowLogger(tracking_uri=tracking.tracking_uri(cfg), run_id=run_id),
    )
    return trainer, checkpoint


def save_bundle(model: torch.nn.Module, cfg: DictConfig, classes: list[str], path: Path,
                frontend: torch.nn.Module | None = None) -> None:
    """`model.pt`: weights plus what rebuilds the model; tensors and plain data only (weights_only).

    On the fly, `frontend` (the CQT, trained kernels included) is saved too.
    """
    bundle = {"state_dict": model.state_dict(), "model": OmegaConf.to_container(cfg.model, resolve=True),
              "features": OmegaConf.to_container(cfg.features, resolve=True), "classes": classes}
    if frontend is not None:
        bundle["frontend"] = frontend.state_dict()
    with atomic.atomic_path(path) as tmp:
        torch.save(bundle, tmp)


def build_module(cfg: DictConfig, model: torch.nn.Module, data: StoreDataModule) -> Classifier:
    """The LightningModule with the run's loss options, schedule and (training-only) augmentation."""
    n_classes = len(data.classes)
    augment = cfg.get("augment") or {}
    weights = class_weights(data.labels[data.rows("train")], n_classes, cfg.trainer.get("class_weights", "none"))
    return Classifier(
        model, cfg.optimizer, n_classes, scheduler_cfg=cfg.get("scheduler"),
        augment=SpectrogramAugment(augment.get("transforms"), n_classes, math.log(cfg.features.amin),
                                   cfg.features.bins_per_octave),
        waveform_augment=WaveformAugment(augment.get("waveform") if cfg.features.get("on_the_fly") else None),
        label_smoothing=cfg.trainer.get("label_smoothing", 0.0), class_weights=weights,
        frontend=CQTFrontend.from_config(cfg.features) if cfg.features.on_the_fly else None,
    )


def train(cfg: DictConfig, run_name_suffix: str = "") -> dict:
    """Fit `cfg.model` on the train split, early-stopped on validation loss; return a summary."""
    tracking.ensure_available(cfg)  # an unreachable tracking server stops us before any work
    ensure_inputs(cfg)
    L.seed_everything(cfg.seed, workers=True)
    data = StoreDataModule(cfg)
    model = build_model(cfg.model, len(data.classes), cfg.features.n_bins, cfg.features.get("top_db"))
    transfer = None
    if cfg.model.get("init_from"):
        transfer = load_matching(model, load_state(cfg.model.init_from))
        print(f"train: model.init_from={cfg.model.init_from}: {transfer.describe()}")
    freeze(model, cfg.model.get("freeze", "none"))
    out = Path(cfg.paths.models)
    out.mkdir(parents=True, exist_ok=True)
    name = tracking.default_run_name(cfg, run_name_suffix)
    with tracking.open_run(cfg, run_name=name, tags=tracking.run_tags(cfg)) as run:
        mlflow.log_params(tracking.flatten_config(cfg))
        summary_table = summarize(model, cfg.features.n_bins, cfg.features.window_frames, name=cfg.model.name)
        n_parameters = summary_table.total_params
        mlflow.log_metrics({"n_parameters": n_parameters, "multiply_adds": summary_table.total_macs})
        mlflow.log_text(summary_table.table(), "model_summary.txt")
        if transfer:
            mlflow.log_dict(vars(transfer), "transfer.json")
        trainer, checkpoint = build_trainer(cfg, out, run.info.run_id)
        module = build_module(cfg, model, data)
        frontend = module.frontend if cfg.features.on_the_fly else None
        trainer.fit(module, datamodule=data)
        model.load_state_dict(load_state(checkpoint.best_model_path))
        best_val = trainer.validate(module, datamodule=data, verbose=False)[0]
        if frontend is not None:  # the best checkpoint's kernels (they train with features.trainable)
            frontend.load_state_dict(load_state(checkpoint.best_model_path, prefix="frontend."))
        save_bundle(model.eval().cpu(), cfg, data.classes, out / "model.pt", frontend.cpu() if frontend is not None else None)
        summary = {
            "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
            "tracking_uri": tracking.tracking_uri(cfg), "run_name": name,
            "best_val_loss": best_val["val_loss"], "best_val_acc": best_val["val_acc"], "epochs": trainer.current_epoch,
            "n_parameters": n_parameters, "multiply_adds": summary_table.total_macs,
        }
        mlflow.log_metrics({"best_val_loss": summary["best_val_loss"], "best_val_acc": summary["best_val_acc"]})
        if cfg.tracking.log_model:  # the best weights, serving raw audio (audiocnn/serving.py)
            info = log_audio_model(out / "model.pt", cfg.tracking.get("registered_model"))
            summary["model_uri"] = info.model_uri
            if info.registered_model_version:
                summary["registered_model"] = f"models:/{cfg.tracking.registered_model}/{info.registered_model_version}"
        atomic.write_json(out / "run.json", summary)
    print(f"train: best val_loss {summary['best_val_loss']:.4f}, val_acc {summary['best_val_acc']:.4f} "
          f"after {summary['epochs']} epochs; MLflow run {summary['run_id']} ({name})")
    return summary
