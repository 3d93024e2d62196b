"""`ChunkScorer`: a chunk of waveform -> its windows' class probabilities, as one `nn.Module`.

The one scoring path of a trained model, run eagerly by `Predictor` and exported as a graph
(ONNX, TorchScript) by `audiocnn export`:
    waveform (batch, samples): a chunk with `margin` samples of context each side
      (`inference.chunks`: samples [f0 * hop_length - margin, f1 * hop_length + margin) of a
      recording at features.sr, zeros beyond it), so samples = F * hop_length + 2 margin
      -> `frames`: log-CQT (`cqt`: the model's own front-end trained on the fly, its kernels; else
         the featurize stage's), rounded to float16 as the feature store holds them  (batch, n_bins, F + 2 margin / hop_length + 1)
      -> `chunk_frames`: the F frames of the chunk, [f0, f1), without the margins; they equal
         the whole recording's frames there                            (batch, n_bins, F) float32
    starts (n_windows,) int64: window start frames, relative to f0 (`inference.chunks`)
      -> `windows`: the window at each start; frames past the chunk's F (a recording shorter
         than a window) are the log floor, as evaluate pads              (batch * n_windows, 1, n_bins, window)
      -> `score`: `models.scorer.WindowScorer.score`, the scorer evaluate uses: the model after its
         front-end (`classify`, peak normalisation inside) in each test-time view (the identity
         unless exported with `--tta-*`) -> softmax(logits / temperature) (the bundle's T, a
         constant of the graph) -> mean over the views          (batch * n_windows, n_classes)
    = (batch, n_windows, n_classes).
The vote (`features.sliding.vote`: the mean of a recording's windows) is the caller's: windows come
from many chunks.
Every size is computed from the inputs' shapes with tensor operations, so the traced graph takes
any chunk length and any number of windows: nothing of audiocnn, librosa or nnAudio is needed to
run the exported file.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiocnn.features.cqt import LogCQT
from audiocnn.models.crnn import pooled_logits
from audiocnn.models.scorer import WindowScorer


class ChunkScorer(nn.Module):
    """`cqt` the chunk's front-end, `scorer` its windows' (`WindowScorer`: model, views, temperature,
    and `floor`, what windows past the chunk hold)."""

    def __init__(self, cqt: LogCQT, scorer: WindowScorer, window_frames: int, margin: int, events: bool = False):
        super().__init__()
        self.events = bool(events)  # an events model: `forward` also gives the windows' frame probabilities
        if margin % cqt.hop_length:
            raise ValueError(f"margin={margin}: must be a whole number of hops ({cqt.hop_length} samples)")
        self.cqt, self.scorer = cqt, scorer
        self.window, self.margin, self.skip = int(window_frames), int(margin), int(margin) // cqt.hop_length
        self.floor = scorer.floor

    def frames(self, waveform: Tensor) -> Tensor:
        """(batch, samples) -> (batch, n_bins, samples // hop_length + 1) float16 log-CQT frames."""
        return self.cqt(waveform).to(torch.float16)

    def chunk_frames(self, waveform: Tensor) -> Tensor:
        """A chunk with its margins (batch, F * hop_length + 2 margin) -> its F frames (batch, n_bins, F)
        float32 (holding float16 values)."""
        frames = self.frames(waveform)
        count = frames.shape[2] - 2 * self.skip - 1
        return frames[:, :, self.skip: self.skip + count].to(torch.float32)

    def windows(self, frames: Tensor, starts: Tensor) -> Tensor:
        """(batch, n_bins, F) frames, (n_windows,) starts -> (batch * n_windows, 1, n_bins, window); frames
        past F are the floor."""
        batch, bins = frames.shape[0], frames.shape[1]
        padded = torch.cat([frames, torch.full((batch, bins, self.window), self.floor, dtype=frames.dtype,
                                                device=frames.device)], dim=2)
        index = (starts[:, None] + torch.arange(self.window, device=frames.device)[None, :]).reshape(-1)
        windows = padded.index_select(2, index).reshape(batch, bins, -1, self.window).permute(0, 2, 1, 3)
        return windows.reshape(-1, 1, bins, self.window)

    def score(self, windows: Tensor) -> Tensor:
        """(n, 1, n_bins, window) windows -> (n, n_classes) probabilities (`models.scorer.WindowScorer.score`)."""
        return self.scorer.score(windows)

    def frame_probabilities(self, waveform: Tensor, starts: Tensor) -> Tensor:
        """An events model's frame outputs: (batch, samples) chunk with margins, (n_windows,) int64 starts ->
        (batch, n_windows, n_out, n_classes), `model.event_probabilities` of each window (no views: the
        decoding was fitted on the plain frames)."""
        windows = self.windows(self.chunk_frames(waveform), starts.to(torch.int64))
        frames = self.scorer.model.event_probabilities(windows)[0].float()
        return frames.reshape(waveform.shape[0], starts.shape[0], frames.shape[1], frames.shape[2])

    def forward(self, waveform: Tensor, starts: Tensor):
        """(batch, samples) chunk with margins, (n_windows,) int64 starts -> (batch, n_windows, n_classes);
        an events model's graph also gives `frame_probabilities` (batch, n_windows, n_out, n_classes)."""
        windows = self.windows(self.chunk_frames(waveform), starts.to(torch.int64))
        if not self.events:
            return self.score(windows).reshape(waveform.shape[0], starts.shape[0], -1)
        frames, pooled = self.scorer.model.event_probabilities(windows)
        # one pass of the CRNN gives both: the clip answer is its event pooling's (without views)
        clips = self.scorer.probabilities(pooled_logits(pooled)[None]) if self.scorer.views.identity \
            else self.score(windows)
        return (clips.reshape(waveform.shape[0], starts.shape[0], -1),
                frames.float().reshape(waveform.shape[0], starts.shape[0], frames.shape[1], frames.shape[2]))
