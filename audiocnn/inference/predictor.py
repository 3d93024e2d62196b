"""`Predictor`: a trained model (model.pt) scoring recordings the way the evaluate stage scores test clips.

It runs `inference.graph.ChunkScorer`, the module `audiocnn export` writes, itself (PyTorch, on its
device): a chunk of waveform -> the CQT (the model's own front-end when trained on the fly) -> frames
rounded to float16, as the store holds them -> the windows -> `models.scorer.WindowScorer`, evaluate's
scorer: the model in each test-time view (`tta`, `models.tta.Views`; the identity by default) ->
softmax(logits / T), T the bundle's temperature (1 unless trained with `trainer.calibrate=temperature`)
-> mean over the views. The decoding, the windows (evaluate's grid), the chunks, the batching and the
vote around it are `inference.backend.Backend`'s, the same as for an exported file.
`audiocnn.inference.api.load_model(source)` wraps it (the Python API); the CLI (`audiocnn
predict`) and the MLflow pyfunc are thin layers over that.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from audiocnn.features.cqt import LogCQT, pick_device
from audiocnn.features.plan import chunk_margin
from audiocnn.inference.backend import Backend
from audiocnn.inference.graph import ChunkScorer
from audiocnn.models.blocks import fold_batch_norms
from audiocnn.models.bundle import load_bundle
from audiocnn.models.scorer import WindowScorer
from audiocnn.models.tta import Views


class Predictor(Backend):
    """`Predictor.load(source)`: any source `audiocnn.models.bundle.weights_file` takes. `tta`: the
    test-time views, `{pitch_bins: [...], time_frames: [...]}` or `Views` (None: the identity)."""

    def __init__(self, model: nn.Module, bundle: dict, device: str = "cpu", batch_size: int = 64,
                 tta: Views | dict | None = None):
        features = bundle["features"]
        views = tta if isinstance(tta, Views) else Views.from_config(tta)
        views = views.check(int(features["n_bins"]), int(features["window_frames"]))
        # A chunk's frames: the model's own front-end when trained on the fly (its possibly trained
        # kernels), else the CQT the featurize stage computed its frames with.
        cqt = model.frontend.cqt if features.get("on_the_fly") else LogCQT.from_config(features)
        self.device = pick_device(device)
        # Batch norms folded into their convs (`models.blocks.fold_batch_norms`), and channels-last conv
        # weights: oneDNN's convolutions and max-pools take about 30% less time per window on the 2-core CPU
        # (NCHW 1.45-1.93 ms, channels-last 1.08-1.30 ms for the default CRNN; the answers equal within 1e-7;
        # benchmarks/eager_profile.py). `graph()` turns the layout back for export.
        self.model = fold_batch_norms(model.eval()).to(self.device, memory_format=torch.channels_last)
        self.cqt = cqt.eval().to(self.device)
        super().__init__(bundle["classes"], features, chunk_margin(self.cqt.radius, int(features["hop_length"])),
                         batch_size, bundle)
        self.floor = math.log(features["amin"])  # what frames past a clip hold
        self.window_scorer = WindowScorer.for_bundle(self.model, bundle, views)
        self.scorer = ChunkScorer(self.cqt, self.window_scorer, self.window, self.margin,
                                  events=self.event_record is not None)
        self.temperature, self.views = self.window_scorer.temperature, self.window_scorer.views

    @classmethod
    def load(cls, source: str | Path, **kwargs) -> "Predictor":
        return cls(*load_bundle(source), **kwargs)

    def graph(self) -> ChunkScorer:
        """The path from a chunk of waveform to its windows' probabilities as one module (what `export`
        writes, and what `run` runs), on the CPU."""
        return self.scorer.cpu().eval().to(memory_format=torch.contiguous_format)

    @torch.inference_mode()
    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """`ChunkScorer` on this predictor's device: (batch, samples) chunks with margins, (n_windows,) starts
        -> (batch, n_windows, n_classes)."""
        answer = self.scorer(torch.from_numpy(waveform).to(self.device), torch.from_numpy(starts).to(self.device))
        return (answer[0] if isinstance(answer, tuple) else answer).float().cpu().numpy()  # events: (clips, frames)

    def short_batches(self, short: list[tuple[np.ndarray, np.ndarray]]) -> list[list[int]]:
        """The short chunks by length, `max_windows` (`batch_size`) to a CQT call (`score_short`), whatever their
        lengths: the exported files' batches (one length and window starts each) are small on recordings of many
        lengths, and a PyTorch call costs more than an onnxruntime one."""
        by_length = sorted(range(len(short)), key=lambda index: len(short[index][0]))
        return [by_length[at: at + self.max_windows] for at in range(0, len(by_length), self.max_windows)]

    @torch.inference_mode()
    def score_short(self, short: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """`[(waveform, starts)]` short chunks -> each one's window probabilities `(n_windows, n_classes)`: their
        CQT in one call, zero-padded to the longest (which leaves each chunk's frames as they are alone:
        beyond its end it holds zeros either way), then their windows, `max_windows` a model call."""
        batch = torch.zeros(len(short), max(len(wave) for wave, _ in short))
        for row, (wave, _) in enumerate(short):
            batch[row, : len(wave)] = torch.from_numpy(wave)
        frames = self.scorer.chunk_frames(batch.to(self.device))  # (rows, n_bins, the longest's frames)
        windows = torch.cat([self.scorer.windows(frames[row: row + 1, :, : (len(wave) - 2 * self.margin) // self.hop_length],
                                                 torch.from_numpy(starts).to(self.device))
                             for row, (wave, starts) in enumerate(short)])  # (all windows, 1, n_bins, window)
        scored = torch.cat([self.scorer.score(windows[at: at + self.max_windows])
                            for at in range(0, len(windows), self.max_windows)]).float().cpu().numpy()
        return np.split(scored, np.cumsum([len(starts) for _, starts in short])[:-1])

    @torch.inference_mode()
    def run_frames(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """An events model's frame outputs (`ChunkScorer.frame_probabilities`): (batch, n_windows, n_out, n_classes)."""
        return self.scorer.frame_probabilities(torch.from_numpy(waveform).to(self.device),
                                               torch.from_numpy(starts).to(self.device)).cpu().numpy()

    def probabilities(self, waveform: Tensor) -> Tensor:
        """`(samples,)` at `self.sr` -> `(n_classes,)`: the mean of the sliding windows' softmax."""
        result = next(self.score([waveform.numpy()], sample_rate=self.sr))
        if result.error:
            raise ValueError(result.error)
        return torch.from_numpy(result.probabilities)

