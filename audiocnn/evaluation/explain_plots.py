"""Figures of `explain`: Grad-CAM grid, saliency profiles over CQT bins, first-layer filters (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from audiocnn import atomic  # noqa: E402
from audiocnn.evaluation.plots import PLAIN_TEXT  # noqa: E402 - class names in titles and legends are plain text


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout(rect=(0, 0, 1, 0.97) if fig._suptitle is not None else (0, 0, 1, 1))  # room for the suptitle
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_gradcam_grid(spectrograms: np.ndarray, maps: np.ndarray, titles: list[str], path: str | Path,
                      title: str = "", columns: int = 2) -> Path:
    """For each clip, its log-CQT `(n_bins, frames)` and the Grad-CAM map over it, side by side.

    `spectrograms` and `maps` are `(clips, n_bins, frames)`; `columns` clips per row
    (each clip takes two panels). Low frequencies at the bottom.
    """
    clips = len(spectrograms)
    rows = math.ceil(clips / columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(6.4 * columns, 2.2 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(clips):
        left, right = axes[i // columns, 2 * (i % columns)], axes[i // columns, 2 * (i % columns) + 1]
        left.imshow(spectrograms[i], origin="lower", aspect="auto", cmap="magma")
        left.set_title(titles[i], fontsize=8)
        right.imshow(spectrograms[i], origin="lower", aspect="auto", cmap="gray")
        right.imshow(maps[i], origin="lower", aspect="auto", cmap="jet", alpha=0.5, vmin=0, vmax=1)
        right.set_title("Grad-CAM", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


@matplotlib.rc_context(PLAIN_TEXT)
def plot_saliency(profiles: dict[str, np.ndarray], frequencies: np.ndarray, path: str | Path) -> Path:
    """Per class, mean |gradient| per CQT bin against the bin's frequency (log axis), each
    profile scaled to its maximum so that classes compare by shape."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lines = [ax.plot(frequencies, profile / max(profile.max(), 1e-12), linewidth=1.2)[0] for profile in profiles.values()]
    ax.set_xscale("log")
    ax.set_xlabel("CQT bin frequency (Hz)")
    ax.set_ylabel("mean |d logit / d input| (scaled)")
    ax.set_title("Which frequencies each class's score depends on")
    ax.legend(lines, list(profiles), fontsize=7, ncol=2)  # explicit: a label starting with "_" is still listed
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_filters(filters: np.ndarray, path: str | Path) -> Path:
    """The first conv layer's kernels `(filters, kernel_f, kernel_t)`, one image each (low frequency at the bottom)."""
    count = len(filters)
    columns = min(8, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.2 * rows + 0.5), squeeze=False)
    limit = float(np.abs(filters).max()) or 1.0
    for ax in axes.flat:
        ax.set_axis_off()
    for i, kernel in enumerate(filters):
        axes.flat[i].imshow(kernel, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.suptitle(f"first conv layer: {count} filters of {filters.shape[1]}x{filters.shape[2]} (freq x time)",
                 fontsize=9)
    return _save(fig, path)
