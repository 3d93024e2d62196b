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

from audiocnn import atomic
from audiocnn.data.names import escape_columns, slug_map
from audiocnn.data.sources._common import LABEL_SEPARATOR
from audiocnn.data.task import MULTILABEL, is_multilabel
from audiocnn.evaluation.calibration import (bootstrap_accuracy_ci, confidence_bins, confidence_calibration_error,
                                             expected_calibration_error, reliability_bins)
from audiocnn.evaluation.metrics import classification_metrics, multilabel_metrics
from audiocnn.evaluation.settings import EvaluateSettings
from audiocnn.evaluation.plots import (plot_confusion_matrix, plot_label_confusion, plot_precision_recall,
                                       plot_reliability_diagram)
from audiocnn.training.datamodule import WindowDataModule

NOT_IN_JSON = ("confusion_matrix", "calibration")  # in predictions.csv / the PNGs and MLflow instead
PER_CLASS = ("per_class_f1", "per_class_precision", "per_class_recall")  # per_class.json, not test.json
MULTILABEL_PER_CLASS = ("per_class_ap", *PER_CLASS, "per_class_support", "per_class_threshold")
CURVE_POINTS = 200  # points of a precision-recall curve kept in curves/precision_recall.json
CURVES = "curves"  # the folder of curve data (a DVC plots folder) and their PNGs, under the metrics folder


def write_reports(probabilities: torch.Tensor, labels: torch.Tensor, data: WindowDataModule, out: Path,
                  title: str, settings: EvaluateSettings = EvaluateSettings(), uncalibrated: torch.Tensor | None = None,
                  extra: dict | None = None) -> tuple[dict, list[Path]]:
    """Metrics of per-clip `probabilities` `(clips, n_classes)` against `labels` `(clips,)`.

    `settings`: the `evaluate` group (top_k, calibration_bins, bootstrap_resamples, bootstrap_seed).
    Writes into `out`: `test.json` (DVC metrics: the scalars and the worst class),
    `per_class.json` (precision, recall and F1 per class), `predictions.csv` (one
    row per test clip; the DVC confusion plot's data), `confusion_matrix.png` (row-normalised),
    `reliability_diagram.png` and each class's one-vs-rest precision-recall curve
    (`write_precision_recall`); returns (metrics, files). `metrics["calibration"]` holds
    the reliability bins (not written to test.json). `uncalibrated`: the same clips' probabilities
    at temperature 1, whose ECE is `ece_uncalibrated` (the `probabilities`' own when not given);
    `extra`: more entries of test.json (the temperature, the test-time views).
    """
    n_bins = settings.calibration_bins
    metrics = classification_metrics(probabilities, labels, data.classes, settings.top_k)
    confidence, predicted = probabilities.max(dim=1)
    low, high = bootstrap_accuracy_ci(predicted == labels, settings.bootstrap_resamples, settings.bootstrap_seed)
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
    one_hot = torch.nn.functional.one_hot(labels.long(), len(data.classes))
    figures += write_precision_recall(probabilities, one_hot, data.classes, out, title)
    atomic.write_json(out / "test.json", {k: v for k, v in metrics.items() if k not in NOT_IN_JSON + PER_CLASS})
    return metrics, [out / "test.json", out / "predictions.csv", *figures]


def _label_sets(decisions: torch.Tensor, classes: list[str]) -> list[str]:
    """`(clips, n_classes)` 0/1 -> each clip's classes, `;`-joined in class order."""
    return [LABEL_SEPARATOR.join(classes[k] for k in row.nonzero().flatten().tolist()) for row in decisions]


def _curve(precision: torch.Tensor, recall: torch.Tensor) -> list[dict[str, float]]:
    """A precision-recall curve thinned to at most CURVE_POINTS `{"recall", "precision"}` points, rounded."""
    keep = torch.linspace(0, len(recall) - 1, min(len(recall), CURVE_POINTS)).round().long().unique()
    return [{"recall": round(float(r), 4), "precision": round(float(p), 4)} for r, p in zip(recall[keep], precision[keep])]


def precision_recall_curves(probabilities: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """{"micro": curve, "per_class": {class: curve}} of `probabilities` `(clips, n_classes)` against 0/1
    `targets` (torchmetrics' curves; classes with a positive clip only)."""
    from torchmetrics.functional.classification import binary_precision_recall_curve

    targets = targets.int()
    micro = binary_precision_recall_curve(probabilities.flatten(), targets.flatten())
    per_class = {name: _curve(*binary_precision_recall_curve(probabilities[:, k], targets[:, k])[:2])
                 for k, name in enumerate(classes) if bool(targets[:, k].any())}
    return {"micro": _curve(*micro[:2]), "per_class": per_class}


def write_precision_recall(probabilities: torch.Tensor, targets: torch.Tensor, classes: list[str], out: Path,
                           title: str) -> list[Path]:
    """`curves/precision_recall.json` (`precision_recall_curves`; DVC plots its first list, the micro
    curve, recall against precision) and `curves/precision_recall.png`; returns both paths."""
    curves = precision_recall_curves(probabilities, targets, classes)
    data = atomic.write_json(out / CURVES / "precision_recall.json", curves)
    return [data, plot_precision_recall(curves["micro"], curves["per_class"], out / CURVES / "precision_recall.png",
                                        title=title)]


def write_multilabel_reports(probabilities: torch.Tensor, targets: torch.Tensor, data: WindowDataModule, out: Path,
                             title: str, thresholds: list[float], extra: dict | None = None,
                             n_bins: int = 15) -> tuple[dict, list[Path]]:
    """Multi-label metrics (`metrics.multilabel_metrics`) of per-clip `probabilities` `(clips, n_classes)`
    against 0/1 `targets`, at the per-class `thresholds`. Writes into `out`: `test.json` (the scalars),
    `per_class.json` (AP, precision, recall, F1, support and threshold per class), `predictions.csv`
    (per test clip: its labels, the labels over their thresholds, and the top class with its
    probability), the precision-recall curves (`write_precision_recall`), `confusion_matrix.png`
    (each class's true / false positives and negatives at its threshold) and `reliability_diagram.png`
    over every (clip, class) pair, whose ECE is test.json's `ece`; returns (metrics, files)."""
    metrics = {**multilabel_metrics(probabilities, targets, data.classes, thresholds), "task": MULTILABEL,
               **(extra or {})}
    pairs, present = probabilities.flatten().double(), targets.flatten().double()  # every (clip, class) decision
    metrics["ece"] = round(confidence_calibration_error(pairs, present, n_bins), 4)
    decisions = probabilities >= torch.tensor(thresholds, dtype=probabilities.dtype)
    confidence, top = probabilities.max(dim=1)
    predictions = pd.DataFrame({
        "path": data.store.index.iloc[data.rows("test")]["path"].to_numpy(),
        "actual": _label_sets(targets.int(), data.classes),
        "predicted": _label_sets(decisions.int(), data.classes),
        "top": [data.classes[i] for i in top.tolist()],
        "confidence": confidence.numpy().round(4),
    })
    with atomic.atomic_path(out / "predictions.csv") as tmp:
        escape_columns(predictions).to_csv(tmp, index=False)
    figures = write_precision_recall(probabilities, targets, data.classes, out,
                                     f"{title}: mAP {metrics['map'] if metrics['map'] is not None else 'n/a'}")
    from sklearn.metrics import multilabel_confusion_matrix

    figures.append(plot_label_confusion(multilabel_confusion_matrix(targets.int().numpy(), decisions.int().numpy()),
                                        data.classes, out / "confusion_matrix.png",
                                        title=f"{title}: micro-F1 {metrics['micro_f1']:.3f}"))
    figures.append(plot_reliability_diagram(confidence_bins(pairs.numpy(), present.numpy(), n_bins), metrics["ece"],
                                            out / "reliability_diagram.png", title=f"{title}: ECE {metrics['ece']:.3f}",
                                            confidence="predicted probability (every clip and class)",
                                            outcome="fraction of labels present", items="(clip, class) pairs"))
    atomic.write_json(out / "per_class.json", {k: metrics[k] for k in MULTILABEL_PER_CLASS})
    atomic.write_json(out / "test.json", {k: v for k, v in metrics.items() if k not in MULTILABEL_PER_CLASS})
    return metrics, [out / "test.json", out / "per_class.json", out / "predictions.csv", *figures]


def log_multilabel_test_metrics(metrics: dict, files: list[Path]) -> None:
    """Multi-label test metrics (`test_map` the headline, per-class AP by class slug) and files into the active run."""
    scalars = {f"test_{k}": metrics[k] for k in ("map", "micro_ap", "lwlrap", "macro_f1", "micro_f1", "ece")
               if metrics[k] is not None}
    mlflow.log_metrics(scalars)
    keys = slug_map(metrics["per_class_ap"], "class")
    mlflow.log_metrics({f"test_ap_{keys[c]}": v for c, v in metrics["per_class_ap"].items() if v is not None})
    mlflow.log_dict({"classes": keys}, "evaluation/metric_keys.json")
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="evaluation")


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
    confidence, correct = predictions["confidence"].to_numpy(dtype=float, copy=True), (predicted == actual).numpy()
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
    if is_multilabel(metrics.get("task")):
        frames = ([f"frame F1       {metrics['frame_macro_f1']:.3f} macro, {metrics['frame_micro_f1']:.3f} micro "
                   f"(at 0.5, {metrics['n_frames']} frames of {metrics['n_strong_clips']} strong clips)"]
                  if metrics.get("frame_macro_f1") is not None else [])
        return "\n".join([f"test mAP       {metrics['map']:.3f}  (macro, {metrics['n_clips']} clips)"
                          if metrics["map"] is not None else "test mAP       n/a (no class has a positive clip)",
                          f"micro AP       {metrics['micro_ap']:.3f}", f"lwlrap         {metrics['lwlrap']:.3f}",
                          f"F1             {metrics['macro_f1']:.3f} macro, {metrics['micro_f1']:.3f} micro "
                          "(per-class thresholds from validation)",
                          *([f"ECE            {metrics['ece']:.3f}  (over every clip and class)"] if "ece" in metrics else []),
                          *frames])
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
