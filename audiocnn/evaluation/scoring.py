"""How the evaluate stage and ensembles score test clips: `evaluate.tta`'s views, the bundle's temperature.

Every sliding window of a test clip is scored in each test-time view (`models.tta`; by
default only the identity), its probabilities are the mean over the views of
softmax(logits / T) with T the model's temperature (`model.pt`'s `temperature`, 1.0 unless
it was trained with `trainer.calibrate=temperature`), and a clip's are the mean of its
windows' (the vote, `features.sliding.vote`). The same logits at T = 1 give the uncalibrated probabilities,
so the ECE before and after calibration come from one pass over the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from audiocnn.features import sliding
from audiocnn.features.cqt import pick_device
from audiocnn.models.bundle import temperature
from audiocnn.models.tta import Views, combine
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.windows import window_logits


@dataclass
class Scores:
    probabilities: torch.Tensor  # (clips, n_classes) at the model's temperature
    uncalibrated: torch.Tensor   # (clips, n_classes) at T = 1 (the same tensor when T = 1)
    labels: torch.Tensor         # (clips,)
    temperature: float
    views: Views


def clip_probabilities(logits: torch.Tensor, counts: list[int], temperature: float = 1.0) -> torch.Tensor:
    """`window_logits`' `(n_views, windows, n_classes)` -> `(clips, n_classes)`: each window's mean over the
    views of softmax(logits / T) (`models.tta.combine`), voted per clip (`features.sliding.vote`)."""
    return sliding.vote(combine(logits, temperature), counts)


def predict_probabilities(model: nn.Module, loader, device: torch.device, views: Views = Views(),
                          floor: float = 0.0, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities per clip from a sliding-window loader: `(clips, n_classes)`, labels `(clips,)`."""
    logits, labels, counts = window_logits(model, loader, device, views, floor)
    return clip_probabilities(logits, counts, temperature), labels


def evaluation_views(cfg: DictConfig) -> Views:
    """`evaluate.tta` as `Views` (the identity alone when it is absent)."""
    return Views.from_config((cfg.get("evaluate") or {}).get("tta"))


def score_test_split(model: nn.Module, bundle: dict, data: WindowDataModule, cfg: DictConfig) -> Scores:
    """The test clips' probabilities under `evaluate.tta` and the bundle's temperature (see the module docstring)."""
    views, scale = evaluation_views(cfg), temperature(bundle)
    logits, labels, counts = window_logits(model, data.test_dataloader(), pick_device(cfg.features.device), views,
                                           math.log(bundle["features"]["amin"]))
    probabilities = clip_probabilities(logits, counts, scale)
    uncalibrated = probabilities if scale == 1.0 else clip_probabilities(logits, counts, 1.0)
    return Scores(probabilities, uncalibrated, labels, scale, views)
