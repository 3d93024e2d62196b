"""How the evaluate stage and ensembles score test clips: `evaluate.tta`'s views, the bundle's temperature.

Every sliding window of a test clip is scored by the model's `models.scorer.WindowScorer` (the
scorer of `Predictor` and of the exported graph): in each test-time view (by default only the
identity), its probabilities the mean over the views of softmax(logits / T) with T the model's
temperature (`model.pt`'s `temperature`, 1.0 unless it was trained with
`trainer.calibrate=temperature`); a clip's are the mean of its windows' (the vote,
`features.sliding.vote`). The same logits at T = 1 give the uncalibrated probabilities, so the
ECE before and after calibration come from one pass over the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from audiocnn.features import sliding
from audiocnn.models.scorer import WindowScorer
from audiocnn.models.tta import Views
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.windows import window_logits


@dataclass
class Scores:
    probabilities: torch.Tensor  # (clips, n_classes) at the model's temperature
    uncalibrated: torch.Tensor   # (clips, n_classes) at T = 1 (the same tensor when T = 1)
    labels: torch.Tensor         # (clips,)
    temperature: float
    views: Views


def predict_probabilities(scorer: WindowScorer, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities per clip from a sliding-window loader: `(clips, n_classes)`, labels `(clips,)`."""
    logits, labels, counts = window_logits(scorer, loader, device)
    return sliding.vote(scorer.probabilities(logits), counts), labels


def score_test_split(model: nn.Module, bundle: dict, data: WindowDataModule, views: Views,
                     device: torch.device) -> Scores:
    """The test clips' probabilities under the test-time `views` (`evaluate.tta`) and the bundle's temperature
    (see the module docstring)."""
    scorer = WindowScorer.for_bundle(model, bundle, views)
    logits, labels, counts = window_logits(scorer, data.test_dataloader(), device)
    probabilities = sliding.vote(scorer.probabilities(logits), counts)
    uncalibrated = (probabilities if scorer.temperature == 1.0
                    else sliding.vote(scorer.probabilities(logits, temperature=1.0), counts))
    return Scores(probabilities, uncalibrated, labels, scorer.temperature, scorer.views)
