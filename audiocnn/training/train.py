"""The train stage: feature store -> best checkpoint, `model.pt`, an MLflow run.

Writes to `paths.models`: `best.ckpt` (Lightning, best validation loss), `model.pt`
(weights + the configs needed to rebuild the model; loads with `weights_only=True`) and
`run.json` (the MLflow run the evaluate stage adds its test metrics to).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import mlflow
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from audiocnn import atomic, tracking
from audiocnn.data.prepare import is_prepared, prepare
from audiocnn.features.featurize import featurize, is_featurized
from audiocnn.models import build_model
from audiocnn.models.summary import summarize
from audiocnn.serving import log_audio_model
from audiocnn.training.datamodule import StoreDataModule
from audiocnn.training.module import Classifier
from audiocnn.training.checkpoints import load_state
from audiocnn.training.transfer import freeze, load_matching


def ensure_inputs(cfg: DictConfig) -> None:
    """Run prepare / featurize if their outputs are missing or were made for other settings."""
    if not is_prepared(cfg):
        prepare(cfg)
    if not is_featurized(cfg):
        featurize(cfg)


def build_trainer(cfg: DictConfig, out: Path, run_id: str) -> tuple[L.Trainer, ModelCheckpoint]:
    """Lightning Trainer: early stopping on val_loss, best checkpoint kept as `out/best.ckpt`."""
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                                 enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        precision=cfg.trainer.precision, deterministic=cfg.trainer.deterministic,
        log_every_n_steps=cfg.trainer.log_every_n_steps, default_root_dir=out,
        callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=cfg.trainer.patience), checkpoint],
        logger=MLFlowLogger(tracking_uri=tracking.tracking_uri(cfg), run_id=run_id),
    )
    return trainer, checkpoint


def save_bundle(model: torch.nn.Module, cfg: DictConfig, classes: list[str], path: Path) -> None:
    """`model.pt`: weights plus what rebuilds the model; tensors and plain data only (weights_only)."""
    with atomic.atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "features": OmegaConf.to_container(cfg.features, resolve=True), "classes": classes}, tmp)


def train(cfg: DictConfig, run_name_suffix: str = "") -> dict:
    """Fit `cfg.model` on the train split, early-stopped on validation loss; return a summary."""
    tracking.ensure_available(cfg)  # an unreachable tracking server stops us before any work
    ensure_inputs(cfg)
    L.seed_everything(cfg.seed, workers=True)
    data = StoreDataModule(cfg)
    model = build_model(cfg.model, len(data.classes), cfg.features.n_bins)
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
        module = Classifier(model, cfg.optimizer, len(data.classes))
        trainer.fit(module, datamodule=data)
        model.load_state_dict(load_state(checkpoint.best_model_path))
        best_val = trainer.validate(module, datamodule=data, verbose=False)[0]
        save_bundle(model.eval().cpu(), cfg, data.classes, out / "model.pt")
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
