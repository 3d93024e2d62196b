"""Classification metrics from per-clip probabilities (torchmetrics)."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def _per_class(values: torch.Tensor, classes: list[str]) -> dict[str, float]:
    return {c: round(float(v), 4) for c, v in zip(classes, values)}


def classification_metrics(probabilities: torch.Tensor, labels: torch.Tensor, classes: list[str],
                           top_k: Sequence[int] = (1,)) -> dict:
    """Accuracy, balanced accuracy, macro-F1, top-k accuracy, per-class precision / recall / F1,
    and the confusion matrix.

    `probabilities` is `(clips, n_classes)`, or the predicted class indices `(clips,)` (then
    top-k accuracy only for k=1); `labels` is `(clips,)` of class indices.
    Balanced accuracy is the mean of the per-class recalls (torchmetrics' macro accuracy).
    `top_k_accuracy` has one entry `top_<k>` per k <= n_classes. A class's accuracy is its
    recall (`per_class_recall`). The confusion
    matrix is a list of rows: row = true class, column = predicted class.
    """
    n = len(classes)
    args = {"num_classes": n, "average": "none"}
    per_class_f1 = multiclass_f1_score(probabilities, labels, **args)
    recall = multiclass_recall(probabilities, labels, **args)
    return {
        "accuracy": float(multiclass_accuracy(probabilities, labels, num_classes=n, average="micro")),
        "balanced_accuracy": float(multiclass_accuracy(probabilities, labels, num_classes=n, average="macro")),
        "macro_f1": float(multiclass_f1_score(probabilities, labels, num_classes=n, average="macro")),
        "top_k_accuracy": {f"top_{k}": float(multiclass_accuracy(probabilities, labels, num_classes=n,
                                                                 average="micro", top_k=k))
                           for k in top_k if k <= n},
        "n_clips": int(len(labels)),
        "per_class_f1": _per_class(per_class_f1, classes),
        "per_class_precision": _per_class(multiclass_precision(probabilities, labels, **args), classes),
        "per_class_recall": _per_class(recall, classes),
        "confusion_matrix": multiclass_confusion_matrix(probabilities, labels, num_classes=n).tolist(),
    }
