"""How far the confidences can be trusted, and how sure the test accuracy is.

Expected calibration error (torchmetrics): clips are binned by confidence (the top
probability) into equal-width bins; ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|.
The bootstrap resamples the test clips with replacement to give a percentile 95%
confidence interval of the accuracy (seeded, so reruns give the same interval).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_calibration_error


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (L1) of `(clips, n_classes)` probabilities against `(clips,)` labels."""
    return float(multiclass_calibration_error(probabilities, labels, num_classes=probabilities.shape[1],
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


def binned_calibration_error(bins: dict[str, list]) -> float:
    """ECE from `reliability_bins`: sum over bins of (clips in bin / clips) * |accuracy - confidence|."""
    total = sum(bins["count"])
    return float(sum(n * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n)
                 / max(total, 1))


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
