"""Per-class decision thresholds of a multi-label model, fitted on the validation clips.

A multi-label model predicts every class whose probability reaches its threshold. One
threshold for all classes (0.5) suits none of them when the classes differ in frequency
and difficulty, so after training each class gets the threshold that maximises its F1 on
the validation split's clips (their sliding windows scored and voted as evaluate does,
`models.scorer.WindowScorer`); the thresholds are stored in `model.pt` (`thresholds`) and
used by evaluate (F1 at the thresholds) and every consumer after it. The precision-recall
curve is torchmetrics'; a class with no positive validation clip keeps `DEFAULT_THRESHOLD`.
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics.functional.classification import multilabel_precision_recall_curve

from audiocnn.features import sliding
from audiocnn.models.scorer import WindowScorer
from audiocnn.data.task import DEFAULT_THRESHOLD
from audiocnn.training.windows import window_logits


def best_f1_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """`(clips, n_classes)` probabilities and 0/1 targets -> per class, the threshold of the highest F1
    (predicting `probability >= threshold`); `DEFAULT_THRESHOLD` for a class without positives."""
    targets = targets.int()
    with warnings.catch_warnings():  # a class without positives: handled below
        warnings.filterwarnings("ignore", "No positive samples found")
        precision, recall, cutoffs = multilabel_precision_recall_curve(probabilities.float(), targets,
                                                                       num_labels=targets.shape[1])
    thresholds = []
    for k, (p, r, t) in enumerate(zip(precision, recall, cutoffs)):
        if not bool(targets[:, k].any()) or len(t) == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        f1 = 2 * p[:-1] * r[:-1] / (p[:-1] + r[:-1]).clamp_min(1e-12)  # the curve's last point has no threshold
        thresholds.append(round(float(t[int(f1.argmax())]), 6))
    return thresholds


def fit_thresholds(scorer: WindowScorer, loader, device: torch.device) -> tuple[list[float], torch.Tensor,
                                                                                 torch.Tensor]:
    """Per-class thresholds on the clips of a sliding-window `loader` (the val split); also returns the
    clips' probabilities `(clips, n_classes)` and targets."""
    logits, targets, counts = window_logits(scorer, loader, device)
    probabilities = sliding.vote(scorer.probabilities(logits), counts)
    return best_f1_thresholds(probabilities, targets), probabilities, targets
