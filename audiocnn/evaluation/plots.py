"""Figures of the evaluate stage: confusion matrix (multi-label: each class's decision counts), reliability
diagram, precision-recall curves (PNG).

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


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """`fig` as a PNG at `path` (atomically), then closed."""
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


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
    return save_figure(fig, path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_reliability_diagram(bins: dict[str, list], ece: float, path: str | Path, title: str = "",
                             confidence: str = "confidence (top probability)", outcome: str = "accuracy",
                             items: str = "clips") -> Path:
    """Accuracy against mean confidence per confidence bin (`calibration.reliability_bins`).

    Bars at the diagonal mean calibrated; below it, over-confident. The lower panel shows how
    the clips spread over the bins. Multi-label data names its axes: `confidence` "predicted
    probability", `outcome` "fraction of labels present", `items` "(clip, class) pairs".
    """
    lower = np.asarray(bins["lower"])
    width = 1.0 / len(lower)
    filled = np.array([a is not None for a in bins["accuracy"]])  # empty bins get no bar
    accuracy = np.array([a for a in bins["accuracy"] if a is not None], dtype=float)
    confidence = np.array([c for c in bins["confidence"] if c is not None], dtype=float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1], sharex=True)
    top.bar(lower[filled], accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label=outcome)
    top.bar(lower[filled], np.abs(confidence - accuracy), bottom=np.minimum(confidence, accuracy), width=width,
            align="edge", color="tab:red", alpha=0.35, label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylabel(outcome)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title or f"reliability diagram: ECE {ece:.3f}")
    bottom.bar(lower, bins["count"], width=width, align="edge", edgecolor="black", color="gray")
    bottom.set_xlabel(confidence)
    bottom.set_ylabel(items)
    bottom.set_xlim(0, 1)
    return save_figure(fig, path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_precision_recall(micro: list[dict], per_class: dict[str, list[dict]], path: str | Path,
                          title: str = "") -> Path:
    """Precision-recall curves (each a list of `{"recall", "precision"}` points): the micro-averaged one
    (every clip and class pooled) in bold, each class's (`{class: curve}`, the first 30) thin behind it."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, curve in list(per_class.items())[:30]:
        ax.plot([p["recall"] for p in curve], [p["precision"] for p in curve], linewidth=0.8, alpha=0.5,
                label=name if len(per_class) <= 10 else None)
    ax.plot([p["recall"] for p in micro], [p["precision"] for p in micro], color="black", linewidth=2.0,
            label="micro-average")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(title or "precision-recall")
    return save_figure(fig, path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_label_confusion(counts: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> Path:
    """Multi-label decisions per class at its threshold: `counts` `(n_classes, 2, 2)` as scikit-learn's
    `multilabel_confusion_matrix` gives them (`[[TN, FP], [FN, TP]]` per class), drawn as one row per
    class with columns TP, FN, FP, TN; each cell's colour is its share of the class's positive clips
    (TP, FN) or negative clips (FP, TN), its count written in. The first 60 classes."""
    counts = np.asarray(counts)[:60]
    table = np.stack([counts[:, 1, 1], counts[:, 1, 0], counts[:, 0, 1], counts[:, 0, 0]], axis=1)
    positives = np.maximum(table[:, :2].sum(axis=1, keepdims=True), 1)
    negatives = np.maximum(table[:, 2:].sum(axis=1, keepdims=True), 1)
    rates = np.concatenate([table[:, :2] / positives, table[:, 2:] / negatives], axis=1)
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.35 * len(table) + 1.5)))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(4), ["true positive", "false negative", "false positive", "true negative"], rotation=20)
    ax.set_yticks(range(len(table)), classes[:len(table)])
    ax.set_title(title or "decisions per class at its threshold")
    for (row, col), count in np.ndenumerate(table):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if rates[row, col] > 0.5 else "black")
    return save_figure(fig, path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_event_timeline(clips: list[tuple[str, np.ndarray, list, list]], frame_seconds: float, classes: list[str],
                        path: str | Path, title: str = "") -> Path:
    """Predicted against true events, one panel per clip of `clips` ((name, frame probabilities
    `(frames, n_classes)`, true events, detected events); events have `onset`, `offset`, `label`): per class
    a row with the true events as grey bars on top, the detections as coloured bars below, and the frame
    probability as a line across the row."""
    rows = max(len(clips), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 0.45 * len(classes) * rows + 1), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (name, probabilities, truth, detected) in zip(axes[:, 0], clips):
        times = (np.arange(len(probabilities)) + 0.5) * frame_seconds
        row_of = {label: i for i, label in enumerate(classes)}
        for i in range(len(classes)):
            ax.plot(times, i + 0.05 + 0.9 * probabilities[:, i], color=colours(i % 10), linewidth=0.8, alpha=0.6)
        for event in truth:
            ax.broken_barh([(event.onset, event.offset - event.onset)], (row_of[event.label] + 0.5, 0.4),
                           color="0.6")
        for event in detected:
            ax.broken_barh([(event.onset, event.offset - event.onset)], (row_of[event.label] + 0.1, 0.4),
                           color=colours(row_of[event.label] % 10))
        ax.set_yticks(np.arange(len(classes)) + 0.5, classes)
        ax.set_ylim(0, len(classes))
        ax.set_xlim(0, len(probabilities) * frame_seconds)
        ax.set_title(name, fontsize=9)
    axes[-1, 0].set_xlabel("time (s): true events grey (top of each row), detected coloured (bottom), "
                           "line: frame probability")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
