"""Stratified, grouped train/val/test splits.

A group (a speaker, a session, a source file) never spans two splits; within that
constraint each split gets close to its share of every label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def grouped_stratified_split(
    labels: pd.Series, groups: pd.Series, *, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """Assign each row a split in `SPLITS`; rows sharing a group share a split.

    Greedy: groups in random order (largest first) go to the split whose label counts
    are furthest below their targets. Returns a Series aligned with `labels`.
    """
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    frame = pd.DataFrame({"label": labels.to_numpy(), "group": groups.to_numpy()})
    per_group = frame.groupby("group")["label"].value_counts().unstack(fill_value=0)  # (groups, labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(per_group))
    sizes = per_group.to_numpy().sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]
    targets = fractions[:, None] * per_group.to_numpy().sum(axis=0)[None, :]  # (splits, labels)
    counts = np.zeros_like(targets)
    assignment: dict[object, str] = {}
    for index in order:
        row = per_group.to_numpy()[index]
        # Deficit each split would have on this group's labels, relative to target.
        deficit = ((targets - counts) * (row > 0)).sum(axis=1) / np.maximum(fractions, 1e-9)
        deficit[fractions == 0] = -np.inf  # a split with no share never takes a group
        split = int(np.argmax(deficit))
        counts[split] += row
        assignment[per_group.index[index]] = SPLITS[split]
    return pd.Series([assignment[g] for g in groups], index=labels.index, name="split")
