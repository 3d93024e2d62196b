"""`ClipClassifier`: waveform -> class probabilities as one `nn.Module`, for export and for scoring.

    waveform (batch, samples) at features.sr, samples >= one window ((window_frames - 1) * hop)
      -> log-CQT (the model's own front-end: its kernels, one strided conv1d per octave)
      -> rounded to float16 and back, as the feature store holds frames     (batch, n_bins, frames)
      -> padded with the log floor to at least one window (clips shorter than a window)
      -> the sliding windows of `training.windows.window_starts(..., "sliding")`:
         starts 0, hop, 2 hop, ... and, when the grid does not end on the last frame, one
         more window ending there                                           (batch * n_windows, 1, n_bins, window)
      -> the model (peak normalisation inside) in each test-time view (`models.tta`; the identity
         unless exported with `--tta-*`) -> softmax(logits / temperature) (the bundle's T, a
         constant of the graph) -> mean over the views -> mean over each clip's windows
      = (batch, n_classes)
Every size is computed from the input's shape with tensor operations, so the traced graph
(TorchScript, ONNX) takes any length: nothing of audiocnn, librosa or nnAudio is needed to
run the exported file. `window_probabilities` gives the per-window answers (timelines).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from audiocnn.features.cqt import LogCQT
from audiocnn.models.tta import Views, window_probabilities


class ClipClassifier(nn.Module):
    def __init__(self, cqt: LogCQT, model: nn.Module, window_frames: int, amin: float, temperature: float = 1.0,
                 views: Views = Views()):
        super().__init__()
        self.cqt, self.model = cqt, model
        self.window, self.hop = int(window_frames), max(int(window_frames) // 2, 1)
        self.floor = math.log(amin)
        self.temperature, self.views = float(temperature), views

    def frames(self, waveform: Tensor) -> Tensor:
        """(batch, samples) -> (batch, n_bins, max(frames, window)) float32 holding float16 values."""
        frames = self.cqt(waveform).to(torch.float16).to(torch.float32)
        count = frames.shape[2]
        short = torch.clamp(torch.as_tensor(self.window - count), min=0)  # frames missing to one window
        pad = torch.full((frames.shape[0], frames.shape[1], self.window), self.floor, dtype=frames.dtype)
        return torch.cat([frames, pad], dim=2)[:, :, : count + short]

    def window_starts(self, count) -> tuple[Tensor, Tensor]:
        """(starts (n_windows,), weights (n_windows,)) for `count` frames: the last window counts only
        when the hop grid does not already end on the last frame (then it would be counted twice)."""
        slack = torch.as_tensor(count - self.window)
        starts = torch.cat([torch.arange(0, slack + 1, self.hop), slack.reshape(1)])
        extra = (torch.remainder(slack, self.hop) != 0).to(torch.float32).reshape(1)
        return starts, torch.cat([torch.ones(starts.shape[0] - 1), extra])

    def window_probabilities(self, waveform: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(probabilities (batch, n_windows, n_classes), starts (n_windows,), weights (n_windows,))."""
        frames = self.frames(waveform)
        batch, bins = frames.shape[0], frames.shape[1]
        starts, weights = self.window_starts(frames.shape[2])
        index = (starts[:, None] + torch.arange(self.window)[None, :]).reshape(-1)
        windows = frames.index_select(2, index).reshape(batch, bins, -1, self.window).permute(0, 2, 1, 3)
        probabilities = window_probabilities(self.model, windows.reshape(-1, 1, bins, self.window), self.views,
                                             self.floor, self.temperature)
        return probabilities.reshape(batch, starts.shape[0], -1), starts, weights

    def forward(self, waveform: Tensor) -> Tensor:
        """(batch, samples) -> (batch, n_classes): the mean of the windows' softmax."""
        probabilities, _, weights = self.window_probabilities(waveform)
        return (probabilities * weights[None, :, None]).sum(dim=1) / weights.sum()
