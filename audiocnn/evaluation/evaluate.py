"""The evaluate stage: trained model + test split -> metrics/, plots, MLflow.

Writes `<paths.metrics>/test.json` (DVC metrics), `predictions.csv` (one row per test
clip; also the DVC confusion plot's data) and `confusion_matrix.png`, and adds the test
metrics and files to the training run in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import torch
from omegaconf import DictConfig

from audiocnn import atomic, tracking
from audiocnn.evaluation.metrics import classification_metrics
from audiocnn.evaluation.plots import plot_confusion_matrix
from audiocnn.features.cqt import pick_device
from audiocnn.training.datamodule import StoreDataModule
from audiocnn.training.module import predict_probabilities
from audiocnn.training.checkpoints import load_trained


def write_reports(probabilities: torch.Tensor, labels: torch.Tensor, data: StoreDataModule, out: Path,
                  title: str) -> tuple[dict, list[Path]]:
    """Metrics of per-clip `probabilities` `(clips, n_classes)` against `labels` `(clips,)`.

    Writes `test.json`, `predictions.csv` (one row per test clip; the DVC confusion
    plot's data) and `confusion_matrix.png` into `out`; returns (metrics, files).
    """
    metrics = classification_metrics(probabilities, labels, data.classes)
    test_rows = data.store.index.iloc[data.rows("test")]
    confidence, predicted = probabilities.max(dim=1)
    predictions = pd.DataFrame({
        "path": test_rows["path"].to_numpy(),
        "actual": [data.classes[i] for i in labels.tolist()],
        "predicted": [data.classes[i] for i in predicted.tolist()],
        "confidence": confidence.numpy().round(4),
    })
    with atomic.atomic_path(out / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    atomic.write_json(out / "test.json", {k: v for k, v in metrics.items() if k != "confusion_matrix"})
    png = plot_confusion_matrix(metrics["confusion_matrix"], data.classes, out / "confusion_matrix.png",
                                title=f"{title}: accuracy {metrics['accuracy']:.3f}")
    return metrics, [out / "test.json", out / "predictions.csv", png]


def log_test_metrics(metrics: dict, files: list[Path]) -> None:
    """Test metrics and report files into the active MLflow run."""
    mlflow.log_metrics({"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"]})
    mlflow.log_metrics({f"test_f1_{c}": v for c, v in metrics["per_class_f1"].items()})
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="evaluation")


def evaluate(cfg: DictConfig) -> dict:
    """Score the model in `paths.models` (or, with `ensemble=[...]`, an ensemble) on the test split."""
    if cfg.get("ensemble"):
        from audiocnn.evaluation.ensemble import evaluate_ensemble

        return evaluate_ensemble(cfg)
    model, bundle = load_trained(cfg.paths.models)
    data = StoreDataModule(cfg)
    if bundle["classes"] != data.classes:
        raise RuntimeError(f"the model in {cfg.paths.models} was trained on other classes; rerun train")
    probabilities, labels = predict_probabilities(model, data.test_dataloader(), pick_device(cfg.features.device))
    out = Path(cfg.paths.metrics)
    metrics, files = write_reports(probabilities, labels, data, out, f"{cfg.model.name} on {cfg.data.name}")
    run = json.loads((Path(cfg.paths.models) / "run.json").read_text())
    with tracking.open_run(cfg, run_id=run["run_id"]):
        log_test_metrics(metrics, files)
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
          f"on {metrics['n_clips']} clips -> {out / 'test.json'}")
    return metrics
