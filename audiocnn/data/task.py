"""The task of a dataset and of the models trained on it: single-label (`multiclass`: one class per
clip, a softmax over the classes) or `multilabel` (several per clip: a sigmoid per class, with
per-class decision thresholds). Prepare writes it in classes.json; a model carries it in `model.pt`
(`models.bundle`) and in an exported file's metadata (`inference.onnx_check`), both untrusted:
`task_problem` checks them. No heavy imports: the ONNX path runs without PyTorch."""

from __future__ import annotations

from typing import Any, Mapping

MULTICLASS, MULTILABEL = "multiclass", "multilabel"
TASKS = (MULTICLASS, MULTILABEL)
DEFAULT_THRESHOLD = 0.5  # a multi-label class without a fitted threshold


def task_problem(meta: Mapping[str, Any], n_classes: int) -> str | None:
    """What is wrong with `meta`'s `task` (default multiclass) and `thresholds` (multi-label only, optional:
    one number in [0, 1] per class), or None."""
    task = meta.get("task", MULTICLASS)
    if task not in TASKS:
        return f"task={task!r:.40}: allowed: {', '.join(TASKS)}"
    if "thresholds" not in meta:
        return None
    thresholds = meta["thresholds"]
    if task != MULTILABEL:
        return "thresholds: only a multi-label model has them"
    if not isinstance(thresholds, (list, tuple)) or len(thresholds) != n_classes:
        size = len(thresholds) if isinstance(thresholds, (list, tuple)) else type(thresholds).__name__
        return f"thresholds: {size}; must be a list of {n_classes} numbers, one per class"
    for i, value in enumerate(thresholds):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            return f"thresholds[{i}]={value!r:.40}: must be a number in [0, 1]"
    return None


def thresholds_of(meta: Mapping[str, Any], n_classes: int) -> list[float] | None:
    """A checked multi-label model's thresholds (DEFAULT_THRESHOLD for each class without stored ones);
    None for a single-label model."""
    if meta.get("task", MULTICLASS) != MULTILABEL:
        return None
    return [float(t) for t in meta.get("thresholds") or [DEFAULT_THRESHOLD] * n_classes]
