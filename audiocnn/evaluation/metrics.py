"""Classification metrics from per-clip probabilities (torchmetrics)."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_recall,
)


def classification_metrics(probabilities: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class F1 and accuracy (recall) and the confusion matrix.

    `probabilities` is `(clips, n_classes)`, `labels` is `(clips,)` of class indices.
    The confusion matrix is a list of rows: row = true class, column = predicted class.
    """
    n = len(classes)
    per_class_f1 = multiclass_f1_score(probabilities, labels, num_classes=n, average="none")
    per_class_acc = multiclass_recall(probabilities, labels, num_classes=n, average="none")
    return {
        "accuracy": float(multiclass_accuracy(probabilities, labels, num_classes=n, average="micro")),
        "macro_f1": float(multiclass_f1_score(probabilities, labels, num_classes=n, average="macro")),
        "n_clips": int(len(labels)),
        "per_class_f1": {c: round(float(v), 4) for c, v in zip(classes, per_class_f1)},
        "per_class_accuracy": {c: round(float(v), 4) for c, v in zip(classes, per_class_acc)},
        "confusion_matrix": multiclass_confusion_matrix(probabilities, labels, num_classes=n).tolist(),
    }
