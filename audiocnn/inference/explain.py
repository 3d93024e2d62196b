"""Grad-CAM of one audio file for a trained model (`audiocnn explain AUDIO --model SOURCE`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from audiocnn.data.audio import load_audio
from audiocnn.evaluation.explain import grad_cam
from audiocnn.evaluation.explain_plots import plot_gradcam_grid
from audiocnn.inference.predictor import Predictor


def explain_file(audio: Path, source: str, output: Path) -> tuple[Path, str, float]:
    """Grad-CAM of `audio` for the model at `source` (folder, model.pt or MLflow URI).

    The whole clip goes through the model's own CQT front-end (padded with silence to at
    least one training window); returns (PNG path, predicted class, probability).
    """
    predictor = Predictor.load(source)
    waveform = load_audio(audio, predictor.sr)
    with torch.no_grad():
        spectrogram = predictor.cqt(waveform[None])  # (1, n_bins, frames)
    frames = max(spectrogram.shape[-1], predictor.window)
    x = nn.functional.pad(spectrogram, (0, frames - spectrogram.shape[-1]), value=predictor.floor)[:, None]
    maps, logits = grad_cam(predictor.model, x)
    probability, predicted = logits.softmax(dim=1)[0].max(dim=0)
    label = predictor.classes[int(predicted)]
    plot_gradcam_grid(x[:, 0].numpy(), maps.numpy(), [f"predicted {label} ({float(probability):.2f})"], output,
                      title=f"Grad-CAM: {Path(audio).name}", columns=1)
    return Path(output), label, float(probability)
