"""The probability vote: a clip's class probabilities are the mean of its windows' softmax.

Evaluate (stored frames, sliding windows), serving and explanations all score clips this
way, so a clip gets the same answer wherever it is scored. A window's probabilities are
`models.tta.combine`'s: the mean over its test-time views of softmax(logits / temperature),
which is plain softmax(logits) with the identity view and temperature 1 (the defaults).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiocnn.models.tta import Views, combine, view_logits


def vote_probabilities(window_probabilities: Tensor, counts: list[int]) -> Tensor:
    """`(sum(counts), n_classes)` window probabilities, clip by clip -> `(len(counts), n_classes)`."""
    return torch.stack([probs.mean(dim=0) for probs in window_probabilities.split(counts)])


def vote(window_logits: Tensor, counts: list[int]) -> Tensor:
    """`(sum(counts), n_classes)` window logits, clip by clip -> `(len(counts), n_classes)` probabilities."""
    return vote_probabilities(window_logits.softmax(dim=1), counts)


@torch.inference_mode()
def window_logits(model: nn.Module, loader, device: torch.device, views: Views = Views(),
                  floor: float = 0.0) -> tuple[Tensor, Tensor, list[int]]:
    """Every window's logits from a sliding-window loader: `(n_views, windows, n_classes)`, labels
    `(clips,)`, windows per clip. `floor`: what the views' shifts pad with (`models.tta`)."""
    model.eval().to(device)
    logits, labels, counts = [], [], []
    for windows, y, n in loader:
        logits.append(view_logits(model, windows.to(device), views, floor).float().cpu())
        labels.append(y)
        counts += n.tolist()
    return torch.cat(logits, dim=1), torch.cat(labels), counts


def clip_probabilities(logits: Tensor, counts: list[int], temperature: float = 1.0) -> Tensor:
    """`window_logits`' `(n_views, windows, n_classes)` -> `(clips, n_classes)` voted probabilities at T."""
    return vote_probabilities(combine(logits, temperature), counts)


def predict_probabilities(model: nn.Module, loader, device: torch.device, views: Views = Views(),
                          floor: float = 0.0, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Class probabilities per clip from a sliding-window loader: `(clips, n_classes)`, labels `(clips,)`."""
    logits, labels, counts = window_logits(model, loader, device, views, floor)
    return clip_probabilities(logits, counts, temperature), labels
