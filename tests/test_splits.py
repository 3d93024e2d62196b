"""Grouped, stratified train/val/test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audiocnn.data.splits import SPLITS, grouped_stratified_split

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def single_label_groups(seed: int = 0) -> tuple[pd.Series, pd.Series]:
    """5 labels x 30 groups (e.g. source files), each group 1-4 clips of one label."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for label in "abcde":
        for g in range(30):
            size = int(rng.integers(1, 5))
            labels += [label] * size
            groups += [f"{label}-{g}"] * size
    # A non-default index: the result must be aligned with it.
    index = pd.Index(rng.permutation(len(labels)) + 1000)
    return pd.Series(labels, index=index), pd.Series(groups, index=index)


def speaker_groups() -> tuple[pd.Series, pd.Series]:
    """FSDD-like: 20 speakers, each says every one of 10 digits 5 times."""
    labels = pd.Series(np.tile(np.repeat(np.arange(10), 5), 20))
    groups = pd.Series(np.repeat([f"speaker{s}" for s in range(20)], 50))
    return labels, groups


def _split(labels, groups, seed=0, val=FRACTIONS["val"], test=FRACTIONS["test"]):
    return grouped_stratified_split(labels, groups, val_fraction=val, test_fraction=test, seed=seed)


@pytest.mark.parametrize("data", [single_label_groups, speaker_groups])
def test_a_group_never_spans_two_splits(data):
    labels, groups = data()
    splits = _split(labels, groups)
    assert splits.index.equals(labels.index)
    assert set(splits) == set(SPLITS)
    assert (pd.DataFrame({"g": groups, "s": splits}).groupby("g")["s"].nunique() == 1).all()


@pytest.mark.parametrize("data", [single_label_groups, speaker_groups])
def test_every_label_is_in_every_split_and_sizes_follow_the_fractions(data):
    labels, groups = data()
    splits = _split(labels, groups)
    table = pd.crosstab(labels, splits)
    assert (table[list(SPLITS)] > 0).all().all(), table
    shares = splits.value_counts(normalize=True)
    for split, fraction in FRACTIONS.items():
        assert shares[split] == pytest.approx(fraction, abs=0.05), shares


def test_per_label_shares_are_stratified():
    labels, groups = single_label_groups()
    splits = _split(labels, groups)
    shares = pd.crosstab(labels, splits, normalize="index")
    for split, fraction in FRACTIONS.items():
        assert (shares[split] - fraction).abs().max() < 0.1, shares


def test_deterministic_for_a_seed_and_different_for_another():
    labels, groups = single_label_groups()
    first, again = _split(labels, groups, seed=3), _split(labels, groups, seed=3)
    pd.testing.assert_series_equal(first, again)
    other = _split(labels, groups, seed=4)
    assert not first.equals(other)
    # Another seed is still a valid grouped split.
    assert (pd.DataFrame({"g": groups, "s": other}).groupby("g")["s"].nunique() == 1).all()


def test_a_zero_fraction_leaves_that_split_empty():
    labels, groups = single_label_groups()
    splits = _split(labels, groups, val=0.0, test=0.2)
    assert "val" not in set(splits)
    assert splits.value_counts(normalize=True)["test"] == pytest.approx(0.2, abs=0.05)
