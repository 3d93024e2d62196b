"""Figures of the evaluate stage: confusion matrix and reliability diagram; multi-label: precision-recall (PNG).

Class names come from the data and are drawn as plain text (`PLAIN_TEXT`): a class named
`$5 & $10` would otherwise be parsed as mathtext and stop the figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from audiocnn import atomic  # noqa: E402

PLAIN_TEXT = {"text.parse_math": False}  # `$` in a class name is a dollar sign, not mathtext


@matplotlib.rc_context(PLAIN_TEXT)
def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) with the counts written in."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised)")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            ax.text(col, row, str(count), ha="center", va="center", color="white" if rates[row, col] > 0.5 else "black")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_reliability_diagram(bins: dict[str, list], ece: float, path: str | Path, title: str = "") -> Path:
    """Accuracy against mean confidence per confidence bin (`calibration.reliability_bins`).

    Bars at the diagonal mean calibrated; below it, over-confident. The bin's clip count is
    written over each bar; the lower panel shows how the clips spread over the bins.
    """
    lower = np.asarray(bins["lower"])
    width = 1.0 / len(lower)
    filled = np.array([a is not None for a in bins["accuracy"]])  # empty bins get no bar
    accuracy = np.array([a for a in bins["accuracy"] if a is not None], dtype=float)
    confidence = np.array([c for c in bins["confidence"] if c is not None], dtype=float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1], sharex=True)
    top.bar(lower[filled], accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(lower[filled], np.abs(confidence - accuracy), bottom=np.minimum(confidence, accuracy), width=width,
            align="edge", color="tab:red", alpha=0.35, label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title or f"reliability diagram: ECE {ece:.3f}")
    bottom.bar(lower, bins["count"], width=width, align="edge", edgecolor="black", color="gray")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("clips")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_precision_recall(micro: dict[str, list], per_class: dict[str, dict[str, list]], path: str | Path,
                          title: str = "") -> Path:
    """Multi-label precision-recall curves: the micro-averaged one (every clip and class pooled) in bold,
    each class's (`{class: {"recall": [...], "precision": [...]}}`, the first 30) thin behind it."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, curve in list(per_class.items())[:30]:
        ax.plot(curve["recall"], curve["precision"], linewidth=0.8, alpha=0.5, label=name if len(per_class) <= 10 else None)
    ax.plot(micro["recall"], micro["precision"], color="black", linewidth=2.0, label="micro-average")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(title or "precision-recall")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
