"""Evaluation: metrics from per-clip probabilities, the confusion-matrix PNG, clip-level voting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audiocnn.evaluation.metrics import classification_metrics
from audiocnn.evaluation.plots import plot_confusion_matrix
from audiocnn.evaluation.scoring import predict_probabilities
from audiocnn.models.scorer import WindowScorer

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
    assert metrics["per_class_recall"] == {"cat": 0.5, "dog": 1.0, "owl": 0.5}
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

    scorer = WindowScorer(FirstPixelsAreLogits())
    probabilities, got_labels = predict_probabilities(scorer, batches, torch.device("cpu"))
    assert probabilities.shape == (3, 3)
    torch.testing.assert_close(probabilities, torch.stack(expected))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))
    assert got_labels.tolist() == torch.cat(labels).tolist()
    # Averaging probabilities is not averaging logits: the second clip tells them apart.
    windows = batches[0][0][1:4, 0, 0, :3]
    assert not torch.allclose(probabilities[1], windows.mean(dim=0).softmax(dim=0))


def test_balanced_accuracy_top_k_and_per_class_precision_recall():
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1],
                          [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])  # predicts 0,0,0,0,0,1
    metrics = classification_metrics(probs, labels, CLASSES, top_k=[1, 2, 5])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 0 + 0) / 3)  # mean recall
    assert metrics["top_k_accuracy"] == {"top_1": pytest.approx(4 / 6), "top_2": 1.0}  # k=5 > 3 classes: skipped
    assert metrics["per_class_recall"] == {"cat": 1.0, "dog": 0.0, "owl": 0.0}
    assert metrics["per_class_precision"] == {"cat": 0.8, "dog": 0.0, "owl": 0.0}


def test_expected_calibration_error_and_reliability_bins():
    from audiocnn.evaluation.calibration import expected_calibration_error, reliability_bins

    # 10 clips at confidence 0.9, 6 right: |0.6 - 0.9| = 0.3; 10 at 0.64, 6 right: 0.04.
    probs = torch.tensor([[0.9, 0.05, 0.05]] * 10 + [[0.64, 0.18, 0.18]] * 10)
    labels = torch.tensor([0] * 6 + [1] * 4 + [0] * 6 + [2] * 4)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.17, abs=1e-4)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins["count"][8] == 10 and bins["count"][6] == 10 and sum(bins["count"]) == 20
    assert bins["accuracy"][8] == 0.6 and bins["confidence"][8] == 0.9 and bins["accuracy"][0] is None


def test_bootstrap_interval_is_seeded_and_brackets_the_accuracy():
    from audiocnn.evaluation.calibration import bootstrap_accuracy_ci

    correct = np.array([1] * 80 + [0] * 20)
    low, high = bootstrap_accuracy_ci(correct, resamples=1000, seed=0)
    assert low < 0.8 < high and (low, high) == bootstrap_accuracy_ci(correct, resamples=1000, seed=0)
    assert high - low == pytest.approx(2 * 1.96 * (0.8 * 0.2 / 100) ** 0.5, abs=0.03)  # the normal approximation
    assert bootstrap_accuracy_ci(np.ones(30)) == (1.0, 1.0)


def test_reliability_diagram_writes_a_png(tmp_path):
    from audiocnn.evaluation.calibration import reliability_bins
    from audiocnn.evaluation.plots import plot_reliability_diagram

    probs = torch.softmax(torch.randn(50, 3) * 2, dim=1)
    path = plot_reliability_diagram(reliability_bins(probs, torch.randint(0, 3, (50,))), 0.1, tmp_path / "r.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
