"""How far the confidences can be trusted, and how sure the test accuracy is.

Expected calibration error (torchmetrics, the one ECE of audiocnn): clips are binned by
confidence (the top probability) into equal-width bins; ECE = sum_b (n_b / n) *
|accuracy_b - confidence_b|. It needs only each clip's confidence and whether it was right,
so predictions pooled from `predictions.csv` files get the same ECE as probabilities.
The bootstrap resamples the test clips with replacement to give a percentile 95%
confidence interval of the accuracy (seeded, so reruns give the same interval).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_calibration_error


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (L1) of `(clips, n_classes)` probabilities against `(clips,)` labels."""
    confidence, predicted = probabilities.max(dim=1)
    return confidence_calibration_error(confidence, predicted == labels, n_bins)


def confidence_calibration_error(confidence: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray,
                                 n_bins: int = 15) -> float:
    """ECE (L1) from each clip's top probability `(clips,)` and whether it was right `(clips,)`
    (torchmetrics' binary calibration error of the top class: its multiclass ECE, computed so)."""
    return float(binary_calibration_error(torch.as_tensor(confidence), torch.as_tensor(correct).long(),
                                          n_bins=n_bins, norm="l1"))


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list]:
    """Per equal-width confidence bin: lower edge, clips, mean confidence and accuracy (None when empty)."""
    confidence, predicted = probabilities.max(dim=1)
    return confidence_bins(confidence.double().numpy(), (predicted == labels).double().numpy(), n_bins)


def confidence_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    """`reliability_bins` from each clip's top probability `(clips,)` and whether it was right `(clips,)`."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)  # bins are (lo, hi]
    bins = {"lower": edges[:-1].round(4).tolist(), "count": [], "confidence": [], "accuracy": []}
    for b in range(n_bins):
        members = which == b
        bins["count"].append(int(members.sum()))
        bins["confidence"].append(round(float(confidence[members].mean()), 4) if members.any() else None)
        bins["accuracy"].append(round(float(correct[members].mean()), 4) if members.any() else None)
    return bins


def bootstrap_accuracy_ci(correct: torch.Tensor | np.ndarray, resamples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `correct` (clips,) booleans."""
    correct = np.asarray(correct, dtype=float)
    if len(correct) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(resamples, len(correct)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (round(float(low), 4), round(float(high), 4))
