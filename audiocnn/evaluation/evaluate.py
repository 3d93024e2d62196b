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
from audiocnn.training.train import load_trained


def evaluate(cfg: DictConfig) -> dict:
    """Score the model in `paths.models` on the test split; return the metrics dict."""
    model, bundle = load_trained(cfg.paths.models)
    data = StoreDataModule(cfg)
    if bundle["classes"] != data.classes:
        raise RuntimeError(f"the model in {cfg.paths.models} was trained on other classes; rerun train")
    probabilities, labels = predict_probabilities(model, data.test_dataloader(), pick_device(cfg.features.device))
    metrics = classification_metrics(probabilities, labels, data.classes)

    out = Path(cfg.paths.metrics)
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
    summary = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    atomic.write_json(out / "test.json", summary)
    png = plot_confusion_matrix(metrics["confusion_matrix"], data.classes, out / "confusion_matrix.png",
                                title=f"{cfg.model.name} on {cfg.data.name}: accuracy {metrics['accuracy']:.3f}")

    run = json.loads((Path(cfg.paths.models) / "run.json").read_text())
    with tracking.open_run(cfg, run_id=run["run_id"]):
        mlflow.log_metrics({"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"]})
        mlflow.log_metrics({f"test_f1_{c}": v for c, v in metrics["per_class_f1"].items()})
        for path in (png, out / "test.json", out / "predictions.csv"):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
          f"on {metrics['n_clips']} clips -> {out / 'test.json'}")
    return metrics
