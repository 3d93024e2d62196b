"""Figures: the confusion matrix as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from audiocnn import atomic  # noqa: E402


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
