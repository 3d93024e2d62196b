"""Grad-CAM of one audio file for a trained model (`audiocnn explain AUDIO --model SOURCE`).

Memory does not grow with the recording's duration: the file is scored as `audiocnn predict`
scores it (`Predictor`: chunks, sliding windows, their vote), and Grad-CAM is drawn over at most
`SHOWN_WINDOWS` windows' worth of frames: the whole clip when it is that short, otherwise the
stretch centred on the window that speaks most for the predicted class, read alone with the
front-end's margin (`inference.graph.ChunkScorer.chunk_frames`: the frames equal the whole file's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from audiocnn.data.audio import load_segment
from audiocnn.errors import InputError
from audiocnn.evaluation.explain import grad_cam, plot_gradcam_grid
from audiocnn.features.cqt import n_frames
from audiocnn.inference.predictor import Predictor

SHOWN_WINDOWS = 8  # the Grad-CAM image spans at most this many windows' frames


def explain_file(audio: Path, source: str, output: Path) -> tuple[Path, str, float]:
    """Grad-CAM of `audio` for the model at `source` (folder, model.pt or MLflow URI), for the class
    `audiocnn predict` gives it; returns (PNG path, predicted class, its probability)."""
    predictor = Predictor.load(source, batch_size=16)  # windows per model call: a fraction of torch's own footprint
    scored = next(predictor.score([audio], keep_windows=True))
    if scored.error:
        raise InputError(f"{audio}: {scored.error}")
    predicted = int(np.argmax(scored.probabilities))
    label, probability = predictor.classes[predicted], float(scored.probabilities[predicted])

    total = n_frames(round(scored.duration * predictor.sr), predictor.hop_length)
    shown = SHOWN_WINDOWS * predictor.window
    best = max(scored.windows, key=lambda w: w[1][predicted])[0]  # start frame of the most telling window
    first = int(np.clip(best + predictor.window // 2 - shown // 2, 0, max(total - shown, 0)))
    last = min(first + shown, total)
    margin, hop_length = predictor.margin, predictor.hop_length
    waveform = load_segment(audio, predictor.sr, first * hop_length - margin, last * hop_length + margin)
    with torch.no_grad():
        frames = predictor.scorer.chunk_frames(waveform[None].to(predictor.device))  # (1, n_bins, last - first)
    width = max(frames.shape[-1], predictor.window)  # a clip shorter than a window: padded with the floor
    x = nn.functional.pad(frames, (0, width - frames.shape[-1]), value=predictor.floor)[:, None]
    maps, _ = grad_cam(predictor.model, x, torch.tensor([predicted]))
    step = hop_length / predictor.sr
    where = "" if (first, last) == (0, total) else f", {first * step:.1f}-{last * step:.1f} s of {scored.duration:.1f} s"
    plot_gradcam_grid(x[:, 0].cpu().numpy(), maps.cpu().numpy(), [f"predicted {label} ({probability:.2f})"], output,
                      title=f"Grad-CAM: {Path(audio).name}{where}", columns=1)
    return Path(output), label, probability
