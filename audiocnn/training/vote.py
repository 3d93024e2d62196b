"""The probability vote: a clip's class probabilities are the mean of its windows' softmax.

Evaluate (stored frames, sliding windows), serving and explanations all score clips this
way, so a clip gets the same answer wherever it is scored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def vote(window_logits: Tensor, counts: list[int]) -> Tensor:
    """`(sum(counts), n_classes)` window logits, clip by clip -> `(len(counts), n_classes)` probabilities."""
    return torch.stack([probs.mean(dim=0) for probs in window_logits.softmax(dim=1).split(counts)])


@torch.inference_mode()
def predict_probabilities(model: nn.Module, loader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Class probabilities per clip from a sliding-window loader: `(clips, n_classes)`, labels `(clips,)`."""
    model.eval().to(device)
    probabilities, labels = [], []
    for windows, y, counts in loader:
        probabilities.append(vote(model(windows.to(device)).float().cpu(), counts.tolist()))
        labels.append(y)
    return torch.cat(probabilities), torch.cat(labels)
