"""What the model looks at: Grad-CAM over the CQT, first-layer filters, saliency per CQT bin.

- Grad-CAM (Selvaraju et al. 2017): the conv feature map A = `model.forward_features(x)`
  (the model interface, `audiocnn.models.head`) is weighted by the spatial mean of
  d score / d A per channel, summed, rectified and bilinearly upsampled to the input's
  `(n_bins, frames)`. Works for the CNN family and the CRNN alike (the recurrent part
  is in `forward_head`, downstream of A).
- Saliency profile: mean |d logit_c / d input| over clips of class c and over time, one
  value per CQT bin: which frequencies the model listens to for each class.
- The first conv layer's filters, as small images (frequency x time).

Each has its figure (PNG): the Grad-CAM grid (`plot_gradcam_grid`, also `inference.explain`'s
image of one file), the saliency profiles over CQT bins, the filters.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from audiocnn import atomic  # noqa: E402
from audiocnn.evaluation.plots import PLAIN_TEXT  # noqa: E402 - class names in titles and legends are plain text
from audiocnn.models.scorer import WindowScorer  # noqa: E402


def _cudnn_off():
    # cuDNN's RNN backward refuses eval mode; the CRNN needs gradients in eval mode here.
    return torch.backends.cudnn.flags(enabled=False)


def grad_cam(model: nn.Module, x: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps of `x` `(batch, 1, n_bins, frames)` for `classes` (batch,) (default: predicted).

    Returns (maps `(batch, n_bins, frames)` in [0, 1] (each divided by its maximum; all zero
    if nothing speaks for the class), logits `(batch, n_classes)`).
    """
    model.eval()
    with torch.enable_grad(), _cudnn_off():
        activation = model.forward_features(x)  # (batch, C, F', T')
        logits = model.forward_head(activation)
        classes = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
        score = logits.gather(1, classes.view(-1, 1)).sum()
        gradient, = torch.autograd.grad(score, activation)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (batch, C, 1, 1): importance of each channel
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True)).detach()  # (batch, 1, F', T')
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return cam / peak, logits.detach()


def saliency_profile(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    """Mean |d logit_class / d input| over the clips and frames: `(n_bins,)`.

    `x` `(batch, 1, n_bins, frames)`, `classes` (batch,): the logit each clip is differentiated for.
    """
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _cudnn_off():
        logits = model(x)
        gradient, = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), x)
    return gradient.abs().mean(dim=(0, 1, 3))


def first_conv_filters(model: nn.Module) -> Tensor:
    """The first Conv2d's weights averaged over input channels: `(filters, kernel_f, kernel_t)`."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return conv.weight.detach().mean(dim=1).cpu()


def bin_frequencies(features: dict, n_bins: int | None = None) -> np.ndarray:
    """Centre frequency of each CQT bin, f_k = fmin * 2^(k / bins_per_octave) (Hz)."""
    bins = np.arange(n_bins or features["n_bins"])
    return features["fmin"] * 2.0 ** (bins / features["bins_per_octave"])


def clips_of_class(labels: np.ndarray) -> dict[int, np.ndarray]:
    """{class index: positions of its clips} for every class present in `labels`: class indices
    `(clips,)`, or multi-label 0/1 targets `(clips, n_classes)` (a clip belongs to each of its classes)."""
    if labels.ndim == 2:
        return {k: np.flatnonzero(labels[:, k] > 0) for k in range(labels.shape[1]) if (labels[:, k] > 0).any()}
    return {label: np.flatnonzero(labels == label) for label in sorted(set(labels.tolist()))}


def pick_clips(labels: np.ndarray, per_class: int) -> list[int]:
    """Positions of the first `per_class` clips of each class present in `labels`, class by class
    (a multi-label clip once, under its first class)."""
    picked: list[int] = []
    for members in clips_of_class(labels).values():
        taken = set(picked)
        picked += [i for i in members.tolist() if i not in taken][:per_class]
    return picked


def explain_model(scorer: WindowScorer, data, features: dict, out: Path, per_class: int = 2) -> list[Path]:
    """Grad-CAM grid, saliency profiles and first-layer filters of `scorer.model` on `data`'s test split
    (single- or multi-label: a multi-label clip's saliency counts for each of its classes).

    `data` is a `WindowDataModule`; the centred window of each clip is used, its probability the
    scorer's (the model's temperature). Writes `gradcam.png`, `saliency.png` and `filters.png`
    into `out`; returns their paths.
    """
    model = scorer.model.cpu().eval()
    dataset = data.dataset("test", "center")
    labels = np.asarray(dataset.labels)
    chosen = pick_clips(labels, per_class)
    x = torch.stack([dataset[i][0] for i in chosen])  # (clips, 1, n_bins, frames)
    maps, logits = grad_cam(model, x)
    probabilities = scorer.probabilities(logits[None])  # (clips, n_classes) at the model's temperature
    truth = [";".join(data.classes[k] for k in np.flatnonzero(labels[i])) if labels.ndim == 2
             else data.classes[labels[i]] for i in chosen]
    titles = [f"true {t}\npred {data.classes[p]} ({probabilities[i, p]:.2f})"
              for i, (t, p) in enumerate(zip(truth, logits.argmax(dim=1).tolist()))]
    out.mkdir(parents=True, exist_ok=True)
    files = [plot_gradcam_grid(x[:, 0].numpy(), maps.numpy(), titles, out / "gradcam.png",
                               title=f"Grad-CAM for the predicted class ({len(chosen)} test clips)")]
    # Saliency over up to 16 clips per class (the whole test split would cost a backward pass each).
    profiles = {}
    for label, members in clips_of_class(labels).items():
        rows = members[:16]
        batch = torch.stack([dataset[i][0] for i in rows])
        profiles[data.classes[label]] = saliency_profile(model, batch, torch.full((len(rows),), label)).numpy()
    files.append(plot_saliency(profiles, bin_frequencies(features), out / "saliency.png"))
    files.append(plot_filters(first_conv_filters(model).numpy(), out / "filters.png"))
    return files


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
