"""`trainer.sampler=balanced`: clip weights from the rarest label, seeded draws per epoch, DDP shares."""

from __future__ import annotations

import numpy as np
import pytest

from audiocnn.training.sampling import BalancedSampler, rare_label_weights


def test_weights_are_the_rarest_labels_inverse_frequency():
    assert rare_label_weights(np.array([0, 0, 0, 1]), 2).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    targets = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    # label 0 on 3 clips, label 1 on 1: the clip with both is drawn for label 1; the clip without labels
    # gets the smallest weight any clip has, so it is still seen
    assert rare_label_weights(targets, 3).tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1 / 3])


def test_a_class_ten_times_rarer_is_drawn_about_as_often():
    labels = np.array([0] * 100 + [1] * 10)
    sampler = BalancedSampler(rare_label_weights(labels, 2), seed=3)
    draws = np.concatenate([(sampler.set_epoch(e), list(sampler))[1] for e in range(20)])
    assert len(sampler) == len(labels) and 0.42 < (labels[draws] == 1).mean() < 0.58


def test_draws_are_seeded_per_epoch_and_processes_share_one_draw():
    weights = rare_label_weights(np.arange(30) % 3, 3)
    one = BalancedSampler(weights, seed=7)
    assert list(one) == list(BalancedSampler(weights, seed=7))  # a resumed training draws the same
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first
    ranks = [BalancedSampler(weights, rank, 2, seed=7) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    both = [list(s) for s in ranks]
    assert len(both[0]) == len(both[1]) == 15
    merged = [None] * 30
    merged[0::2], merged[1::2] = both
    assert merged == list(one)  # rank r takes draws r, r + 2, ... of the one sequence
