"""Frame-level scores of an `events` model on the test split (docs/events.md): how well its frame outputs
find where the annotated events sound, before any event post-processing.

Each strong test clip of L CQT frames is cut into windows of `features.window_frames` frames starting at
0, n·s, 2n·s, ... (n = window // s output frames of s = the model's time stride CQT frames: tiled, no
overlap, the last one padded with the floor), so every output frame of the clip, ceil(L / s) of them, is
scored exactly once, by `model.event_probabilities`; the clip's targets are `data.events.frame_targets` of
its events at `frame_seconds` = hop · s / sr, the frames of the training windows' grid (a window starting
at a multiple of s). Weak test clips have no frame truth and are left out.

`frame_metrics` gives macro and micro F1 over every (frame, class) of those clips at a threshold of 0.5
(torchmetrics). Event-based metrics (onsets and offsets matched with collars, PSDS) are a later step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import multilabel_f1_score

from audiocnn.data.events import frame_targets, output_frame_seconds
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.windows import cut_window

FRAME_THRESHOLD = 0.5


@torch.inference_mode()
def frame_scores(model: nn.Module, data: WindowDataModule, split: str, time_stride: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(frame probabilities `(frames, n_classes)`, 0/1 targets `(frames, n_classes)`, strong clips) over every
    output frame of `split`'s strong clips, clip after clip (module docstring)."""
    features = data.cfg.features
    window = int(features.window_frames)
    n_out = window // time_stride
    frame_seconds = output_frame_seconds(features.hop_length, features.sr, time_stride)
    model = model.eval().to(device)
    probabilities, targets, clips = [], [], 0
    for row in data.rows(split):
        if not data.strong[row]:
            continue
        frames = data.store.frames(int(row))
        n_frames = math.ceil(len(frames) / time_stride)
        starts = range(0, max(len(frames), 1), n_out * time_stride)
        windows = torch.from_numpy(np.stack([cut_window(frames, s, window, data.floor) for s in starts])[:, None])
        clip = model.event_probabilities(windows.to(device))[0].float().cpu()  # (windows, n_out, n_classes)
        probabilities.append(clip.flatten(0, 1)[:n_frames])
        targets.append(torch.from_numpy(frame_targets(data.clip_events[row], n_frames, frame_seconds, data.classes)))
        clips += 1
    n_classes = len(data.classes)
    if not clips:
        return torch.zeros(0, n_classes), torch.zeros(0, n_classes), 0
    return torch.cat(probabilities), torch.cat(targets), clips


def frame_metrics(probabilities: torch.Tensor, targets: torch.Tensor, clips: int, frame_seconds: float) -> dict:
    """test.json's frame-level figures: macro and micro F1 at `FRAME_THRESHOLD` (None without a strong clip),
    the strong clips and frames they are over, and the frames' duration."""
    n = targets.shape[1]
    scored = len(targets) > 0
    args = {"num_labels": n, "threshold": FRAME_THRESHOLD}
    return {
        "frame_macro_f1": round(float(multilabel_f1_score(probabilities, targets.int(), average="macro", **args)), 4)
        if scored else None,
        "frame_micro_f1": round(float(multilabel_f1_score(probabilities, targets.int(), average="micro", **args)), 4)
        if scored else None,
        "frame_threshold": FRAME_THRESHOLD, "frame_seconds": round(frame_seconds, 6),
        "n_strong_clips": clips, "n_frames": int(len(targets)),
    }
