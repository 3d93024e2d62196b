"""Classification metrics from per-clip probabilities (torchmetrics; lwlrap from scikit-learn)."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
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


def label_weighted_lrap(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """lwlrap (Fonseca et al., DCASE 2019 task 2): label ranking average precision with every
    (clip, true label) pair weighing the same, i.e. scikit-learn's LRAP with each clip weighted by
    its number of labels."""
    from sklearn.metrics import label_ranking_average_precision_score

    weights = targets.sum(dim=1).numpy()
    return float(label_ranking_average_precision_score(targets.numpy(), probabilities.numpy(), sample_weight=weights))


def multilabel_metrics(probabilities: torch.Tensor, targets: torch.Tensor, classes: list[str],
                       thresholds: Sequence[float]) -> dict:
    """Multi-label metrics of per-clip `probabilities` `(clips, n_classes)` against 0/1 `targets`.

    `map` (the headline): the mean of the per-class average precisions over the classes that have
    a positive clip (a class without one has no AP: `per_class_ap` null, left out of the mean);
    `micro_ap`: AP of every (clip, class) decision pooled; `lwlrap`; and at the per-class
    `thresholds` (a class predicted when its probability >= its threshold): macro and micro F1,
    per-class precision / recall / F1; `per_class_support`: positive clips per class.
    """
    n, targets = len(classes), targets.int()
    ap = multilabel_average_precision(probabilities, targets, num_labels=n, average="none")
    support = targets.sum(dim=0)
    present = support > 0
    predicted = (probabilities >= torch.tensor(list(thresholds), dtype=probabilities.dtype)).int()
    args = {"num_labels": n, "threshold": 0.5}  # on the 0/1 decisions
    return {
        "map": round(float(ap[present].mean()), 4) if bool(present.any()) else None,
        "micro_ap": round(float(multilabel_average_precision(probabilities, targets, num_labels=n,
                                                             average="micro")), 4),
        "lwlrap": round(label_weighted_lrap(probabilities, targets), 4),
        "macro_f1": round(float(multilabel_f1_score(predicted, targets, average="macro", **args)), 4),
        "micro_f1": round(float(multilabel_f1_score(predicted, targets, average="micro", **args)), 4),
        "n_clips": int(len(targets)),
        "classes_without_positives": int((~present).sum()),
        "per_class_ap": {c: (round(float(v), 4) if has else None) for c, v, has in zip(classes, ap, present)},
        "per_class_f1": _per_class(multilabel_f1_score(predicted, targets, average="none", **args), classes),
        "per_class_precision": _per_class(multilabel_precision(predicted, targets, average="none", **args), classes),
        "per_class_recall": _per_class(multilabel_recall(predicted, targets, average="none", **args), classes),
        "per_class_support": {c: int(v) for c, v in zip(classes, support)},
        "per_class_threshold": {c: float(t) for c, t in zip(classes, thresholds)},
    }
