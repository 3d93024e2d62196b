"""`WindowScorer`: a model's windows -> class probabilities; the one place views and temperature are applied.

    x: windows as the model takes them (`models.head`: stored frames `(batch, 1, n_bins, frames)`,
       or waveform windows `(batch, samples)` for a model trained on the fly)
    -> `model.frontend`                                        (batch, 1, n_bins, frames)
    -> each test-time view (`models.tta.Views`): the frames shifted by k bins along frequency
       (on a CQT a pitch shift: one semitone is `bins_per_octave / 12` bins; k > 0 is up) and by
       t frames along time (t > 0 is later); what a shift moves out of the window is dropped and
       what it opens is the spectrogram's floor, `log(features.amin)` (the log-CQT of silence),
       never wrapped around                                  (n_views * batch, 1, n_bins, frames)
    -> `model.classify`                                        (n_views, batch, n_classes) logits
    -> softmax(logits / temperature), mean over the views     (batch, n_classes)
       (a multi-label or events model: sigmoid(logits / temperature), each class's probability on its own)
With the identity view alone and temperature 1 that is exactly `softmax(model(x))` (`sigmoid(model(x))`).

Evaluate and ensembles (`evaluation.scoring`, through `training.windows.window_logits`), the
temperature fit (`training.temperature`), `Predictor`, explain, the pyfunc and the exported graph
(`inference.graph.ChunkScorer`, which computes a chunk's frames itself and calls `score`) all
score windows with this module: there is no other copy of the views or of the temperature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from audiocnn.data.task import is_multilabel
from audiocnn.models.tta import Views


def shift(x: Tensor, bins: int, frames: int, floor: float) -> Tensor:
    """`x` (..., n_bins, n_frames) shifted up by `bins` and later by `frames`, padded with `floor`."""
    if bins == 0 and frames == 0:
        return x
    n_bins, n_frames = x.shape[-2], x.shape[-1]
    padded = nn.functional.pad(x, (max(frames, 0), max(-frames, 0), max(bins, 0), max(-bins, 0)), value=floor)
    return padded[..., max(-bins, 0): max(-bins, 0) + n_bins, max(-frames, 0): max(-frames, 0) + n_frames]


def view_probabilities(logits: Tensor, temperature: Tensor | float = 1.0, multilabel: bool = False) -> Tensor:
    """`(n_views, batch, n_classes)` logits -> `(batch, n_classes)`: mean over the views of softmax(logits / T)
    (`multilabel`: of sigmoid(logits / T)). Float16 logits are scored in float32; float64 ones (the
    temperature fit) stay float64."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if not (isinstance(temperature, (int, float)) and temperature == 1.0):
        logits = logits / temperature
    return (logits.sigmoid() if multilabel else logits.softmax(dim=-1)).mean(dim=0)


class WindowScorer(nn.Module):
    """`model` (a `models.head.CQTClassifier`) scoring windows in `views` at `temperature`; `floor`:
    what the shifts pad with, `log(features.amin)`; `multilabel`: sigmoid instead of softmax. See the
    module docstring for the shapes."""

    def __init__(self, model: nn.Module, views: Views = Views(), floor: float = 0.0, temperature: float = 1.0,
                 multilabel: bool = False):
        super().__init__()
        self.model, self.views = model, views
        self.floor, self.temperature, self.multilabel = float(floor), float(temperature), bool(multilabel)

    @classmethod
    def for_bundle(cls, model: nn.Module, bundle: dict, views: Views = Views()) -> "WindowScorer":
        """The scorer of a loaded `model.pt`: its temperature, its features' floor and its task."""
        return cls(model, views, math.log(bundle["features"]["amin"]), float(bundle.get("temperature", 1.0)),
                   multilabel=is_multilabel(bundle.get("task")))

    def view_logits(self, frames: Tensor) -> Tensor:
        """`(batch, 1, n_bins, frames)` front-end output -> `(n_views, batch, n_classes)` logits."""
        if self.views.identity:
            return self.model.classify(frames)[None]
        stacked = torch.cat([shift(frames, k, t, self.floor) for k, t in self.views.shifts])
        return self.model.classify(stacked).reshape(len(self.views.shifts), frames.shape[0], -1)

    def logits(self, x: Tensor) -> Tensor:
        """Windows as the model takes them -> `(n_views, batch, n_classes)` logits (at T = 1)."""
        if self.views.identity:  # model(x) is model.classify(model.frontend(x))
            return self.model(x)[None]
        return self.view_logits(self.model.frontend(x))

    def probabilities(self, logits: Tensor, temperature: Tensor | float | None = None) -> Tensor:
        """`logits`' `(n_views, batch, n_classes)` -> `(batch, n_classes)` at `temperature` (None: the model's)."""
        return view_probabilities(logits, self.temperature if temperature is None else temperature, self.multilabel)

    def score(self, frames: Tensor) -> Tensor:
        """`(batch, 1, n_bins, frames)` front-end output -> `(batch, n_classes)` probabilities."""
        return self.probabilities(self.view_logits(frames))

    def forward(self, x: Tensor) -> Tensor:
        """Windows as the model takes them -> `(batch, n_classes)` probabilities."""
        return self.probabilities(self.logits(x))
