"""Reports of per-clip test probabilities: test.json, predictions.csv, the PNGs, MLflow metrics.

Shared by the evaluate stage (one model), ensembles (mean of members' probabilities) and
repeated experiments (`write_pooled_reports`: every fold's / seed's `predictions.csv` pooled).
Class names come from the data: test.json and predictions.csv keep them as they are (the CSV's
text cells escaped against spreadsheet formulas, `audiocnn.data.names.csv_cell`); MLflow metric
keys use their slugs (`test_f1_R_B` for class `R&B`), the mapping logged as
`evaluation/metric_keys.json`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import torch
from omegaconf import DictConfig

from audiocnn import atomic
from audiocnn.data.names import escape_columns, slug_map
from audiocnn.evaluation.calibration import (bootstrap_accuracy_ci, confidence_bins, confidence_calibration_error,
                                             expected_calibration_error, reliability_bins)
from audiocnn.evaluation.metrics import classification_metrics
from audiocnn.evaluation.plots import plot_confusion_matrix, plot_reliability_diagram
from audiocnn.training.datamodule import WindowDataModule

NOT_IN_JSON = ("confusion_matrix", "calibration")  # in predictions.csv / the PNGs and MLflow instead
PER_CLASS = ("per_class_f1", "per_class_precision", "per_class_recall")  # per_class.json, not test.json


def write_reports(probabilities: torch.Tensor, labels: torch.Tensor, data: WindowDataModule, out: Path,
                  title: str, settings: dict | DictConfig | None = None, uncalibrated: torch.Tensor | None = None,
                  extra: dict | None = None) -> tuple[dict, list[Path]]:
    """Metrics of per-clip `probabilities` `(clips, n_classes)` against `labels` `(clips,)`.

    `settings` is the `evaluate` config (top_k, calibration_bins, bootstrap_resamples,
    bootstrap_seed). Writes into `out`: `test.json` (DVC metrics: the scalars and the worst class),
    `per_class.json` (precision, recall and F1 per class), `predictions.csv` (one
    row per test clip; the DVC confusion plot's data), `confusion_matrix.png` (row-normalised)
    and `reliability_diagram.png`; returns (metrics, files). `metrics["calibration"]` holds
    the reliability bins (not written to test.json). `uncalibrated`: the same clips' probabilities
    at temperature 1, whose ECE is `ece_uncalibrated` (the `probabilities`' own when not given);
    `extra`: more entries of test.json (the temperature, the test-time views).
    """
    settings = dict(settings or {})
    n_bins = settings.get("calibration_bins", 15)
    metrics = classification_metrics(probabilities, labels, data.classes, list(settings.get("top_k", [1])))
    confidence, predicted = probabilities.max(dim=1)
    low, high = bootstrap_accuracy_ci(predicted == labels, settings.get("bootstrap_resamples", 1000),
                                      settings.get("bootstrap_seed", 0))
    metrics["accuracy_ci95"] = {"low": low, "high": high}
    metrics["ece"] = round(expected_calibration_error(probabilities, labels, n_bins), 4)
    metrics["ece_uncalibrated"] = metrics["ece"] if uncalibrated is None else round(
        expected_calibration_error(uncalibrated, labels, n_bins), 4)
    metrics.update(extra or {})
    metrics["calibration"] = reliability_bins(probabilities, labels, n_bins)
    test_rows = data.store.index.iloc[data.rows("test")]
    predictions = pd.DataFrame({
        "path": test_rows["path"].to_numpy(),
        "actual": [data.classes[i] for i in labels.tolist()],
        "predicted": [data.classes[i] for i in predicted.tolist()],
        "confidence": confidence.numpy().round(4),
    })
    with atomic.atomic_path(out / "predictions.csv") as tmp:
        escape_columns(predictions).to_csv(tmp, index=False)
    figures = _write_class_reports(metrics, data.classes, out, title, f"{metrics['accuracy']:.3f}")
    atomic.write_json(out / "test.json", {k: v for k, v in metrics.items() if k not in NOT_IN_JSON + PER_CLASS})
    return metrics, [out / "test.json", out / "predictions.csv", *figures]


def _write_class_reports(metrics: dict, classes: list[str], out: Path, title: str, accuracy: str,
                         **pooled) -> list[Path]:
    """Sets `metrics["worst_class"]` (the lowest recall); writes `per_class.json`, `confusion_matrix.png`
    (titled `<title>: accuracy <accuracy>`) and `reliability_diagram.png`. `pooled` goes into both JSONs."""
    recall = metrics["per_class_recall"]
    worst = min(recall, key=recall.get)
    metrics["worst_class"] = {"name": worst, "recall": recall[worst], **pooled}
    atomic.write_json(out / "per_class.json", {**{k: metrics[k] for k in PER_CLASS}, **pooled})
    png = plot_confusion_matrix(metrics["confusion_matrix"], classes, out / "confusion_matrix.png",
                                title=f"{title}: accuracy {accuracy}")
    reliability = plot_reliability_diagram(metrics["calibration"], metrics["ece"], out / "reliability_diagram.png",
                                           title=f"{title}: ECE {metrics['ece']:.3f}")
    return [out / "per_class.json", png, reliability]


def write_pooled_reports(predictions: pd.DataFrame, classes: list[str], out: Path, title: str, accuracy: str,
                         n_bins: int = 15) -> dict:
    """One model's metrics and ECE for the pooled test predictions of several runs: `predictions.csv`'s
    rows (`actual`, `predicted`, `confidence`: the top probability; no top-k beyond 1) and `run`.

    Writes `predictions.csv` and `_write_class_reports`' files into `out`; returns the metrics
    (`worst_class` with `pooled_over_runs`).
    """
    with atomic.atomic_path(out / "predictions.csv") as tmp:
        escape_columns(predictions).to_csv(tmp, index=False)
    number = {name: i for i, name in enumerate(classes)}
    actual = torch.tensor(predictions["actual"].map(number).to_numpy())
    predicted = torch.tensor(predictions["predicted"].map(number).to_numpy())
    metrics = classification_metrics(predicted, actual, classes)
    confidence, correct = predictions["confidence"].to_numpy(), (predicted == actual).numpy()
    metrics["ece"] = round(confidence_calibration_error(confidence, correct, n_bins), 4)
    metrics["calibration"] = confidence_bins(confidence, correct, n_bins)
    _write_class_reports(metrics, classes, out, title, accuracy, pooled_over_runs=predictions["run"].nunique())
    return metrics


def log_test_metrics(metrics: dict, files: list[Path]) -> None:
    """Test metrics and report files into the active MLflow run."""
    ci = metrics["accuracy_ci95"]
    mlflow.log_metrics({"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
                        "test_balanced_accuracy": metrics["balanced_accuracy"], "test_ece": metrics["ece"],
                        "test_ece_uncalibrated": metrics["ece_uncalibrated"],
                        "test_accuracy_ci95_low": ci["low"], "test_accuracy_ci95_high": ci["high"]})
    if "temperature" in metrics:
        mlflow.log_metric("temperature", metrics["temperature"])
    mlflow.log_metrics({f"test_{name}_accuracy": v for name, v in metrics["top_k_accuracy"].items()})
    keys = slug_map(metrics["per_class_f1"], "class")  # class names are data: only slugs become keys
    for kind in ("f1", "precision", "recall"):
        mlflow.log_metrics({f"test_{kind}_{keys[c]}": v for c, v in metrics[f"per_class_{kind}"].items()})
    mlflow.log_dict({"classes": keys}, "evaluation/metric_keys.json")
    mlflow.log_dict(metrics["calibration"], "evaluation/calibration.json")
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="evaluation")


def describe_results(metrics: dict) -> str:
    """A few readable lines from a `test.json`: one model's (accuracy with its CI) or repeats' (mean +/- std)."""
    if "accuracy_ci95" in metrics:
        ci = metrics["accuracy_ci95"]
        lines = [f"test accuracy  {metrics['accuracy']:.3f}  (95% CI {ci['low']:.3f}-{ci['high']:.3f}, "
                 f"{metrics['n_clips']} clips)"]
    else:
        lines = [f"test accuracy  {metrics['accuracy']:.3f} +/- {metrics['accuracy_std']:.3f}  "
                 f"(min {metrics['accuracy_min']:.3f} over {metrics['n_runs']} runs)"]
    lines.append(f"macro-F1       {metrics['macro_f1']:.3f}")
    temperature = metrics.get("temperature", 1.0)
    lines.append(f"ECE            {metrics['ece']:.3f}" + (
        f"  (temperature {temperature:.3g}; {metrics['ece_uncalibrated']:.3f} without)"
        if temperature != 1.0 and "ece_uncalibrated" in metrics else ""))
    if "worst_class" in metrics:
        worst = metrics["worst_class"]
        lines.append(f"worst class    {worst['name']} (recall {worst['recall']:.3f})")
    return "\n".join(lines)
