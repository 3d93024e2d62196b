"""Evaluation: metrics from per-clip probabilities, the confusion-matrix PNG, clip-level voting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audiocnn.evaluation.metrics import classification_metrics
from audiocnn.evaluation.plots import plot_confusion_matrix
from audiocnn.training.module import predict_probabilities

CLASSES = ["cat", "dog", "owl"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _probabilities(predicted: list[int], n: int = 3) -> torch.Tensor:
    """Soft probabilities whose argmax is `predicted`."""
    probs = torch.full((len(predicted), n), 0.1)
    probs[torch.arange(len(predicted)), predicted] = 0.8
    return probs


def test_classification_metrics_on_known_predictions():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = [0, 1, 1, 1, 2, 0]
    metrics = classification_metrics(_probabilities(predicted), labels, CLASSES)

    assert metrics["n_clips"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # Rows are the true class, columns the predicted one.
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # Recall per class: cat 1/2, dog 2/2, owl 1/2.
    assert metrics["per_class_accuracy"] == {"cat": 0.5, "dog": 1.0, "owl": 0.5}
    # Precision: cat 1/2, dog 2/3, owl 1/1 -> F1: 0.5, 0.8, 2/3.
    assert metrics["per_class_f1"] == {"cat": 0.5, "dog": 0.8, "owl": 0.6667}
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)


def test_perfect_predictions():
    labels = torch.tensor([2, 0, 1, 2])
    metrics = classification_metrics(_probabilities(labels.tolist()), labels, CLASSES)
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]


def test_plot_confusion_matrix_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "confusion.png"
    returned = plot_confusion_matrix([[3, 1, 0], [0, 4, 0], [2, 0, 0]], CLASSES, path, title="test")
    assert returned == path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 400 and image.shape[1] >= 400
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.png"]  # no temp file left


class FirstPixelsAreLogits(nn.Module):
    """(n, 1, F, W) -> (n, 3): the first three values of each window's top row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :3]


def test_predict_probabilities_averages_window_probabilities_per_clip():
    torch.manual_seed(0)
    counts = [[1, 3], [2]]  # two batches: clips with 1, 3 and 2 windows
    batches, expected, labels = [], [], []
    for batch_counts in counts:
        windows = torch.randn(sum(batch_counts), 1, 4, 5) * 3
        y = torch.randint(0, 3, (len(batch_counts),))
        batches.append((windows, y, torch.tensor(batch_counts)))
        probs = windows[:, 0, 0, :3].softmax(dim=1)
        expected += [p.mean(dim=0) for p in probs.split(batch_counts)]
        labels.append(y)

    probabilities, got_labels = predict_probabilities(FirstPixelsAreLogits(), batches, torch.device("cpu"))
    assert probabilities.shape == (3, 3)
    torch.testing.assert_close(probabilities, torch.stack(expected))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))
    assert got_labels.tolist() == torch.cat(labels).tolist()
    # Averaging probabilities is not averaging logits: the second clip tells them apart.
    windows = batches[0][0][1:4, 0, 0, :3]
    assert not torch.allclose(probabilities[1], windows.mean(dim=0).softmax(dim=0))
