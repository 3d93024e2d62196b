"""Stratified, grouped train/val/test splits.

A group (a speaker, a session, a source file) never spans two splits; within that
constraint each split gets close to its share of every label. `data.val_groups` makes
validation whole groups the training never sees (`val_group_splits`), as the test split is.
Multi-label rows (a `labels` column of lists) are stratified by an approximation of iterative
stratification (`grouped_multilabel_split`); `stratified_split` picks one or the other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from audiocnn.errors import ConfigError

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


def grouped_multilabel_split(
    label_lists: pd.Series, groups: pd.Series, *, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """`grouped_stratified_split` for multi-label rows (`label_lists`: one list of labels per row).

    An approximation of iterative stratification (Sechidis et al. 2011) over groups: a group
    counts every label of its clips; groups holding the rarest labels are placed first (then
    larger before smaller, ties in a seeded random order), each into the split whose counts of
    the group's labels are furthest below their targets. The (groups, labels) counts are sparse,
    so memory and time grow with the number of (clip, label) pairs, not groups x labels. (The
    `iterative-stratification` package is not used: its wheel installs a top-level `tests`
    package that shadows this project's tests.) Clips without a label (event-free strong clips) are
    stratified as one more label.
    """
    group_codes, group_names = pd.factorize(groups, sort=True)
    no_label = [""]  # an event-free clip's empty list: spread over the splits as a label of its own
    pairs = pd.DataFrame({"group": group_codes, "label": [list(labels) or no_label for labels in label_lists]})
    pairs = pairs.explode("label")
    label_codes, label_names = pd.factorize(pairs["label"], sort=True)
    counts = pd.DataFrame({"group": pairs["group"].to_numpy(dtype=np.int64), "label": label_codes}).value_counts()
    matrix = sparse.csr_matrix((counts.to_numpy(), (counts.index.get_level_values("group"),
                                                    counts.index.get_level_values("label"))),
                               shape=(len(group_names), len(label_names)))  # (groups, labels): clips with it
    totals = np.asarray(matrix.sum(axis=0)).ravel()
    rarity = np.minimum.reduceat(totals[matrix.indices], matrix.indptr[:-1])  # every group has a label
    order = np.random.default_rng(seed).permutation(len(group_names))
    order = order[np.lexsort((-np.asarray(matrix.sum(axis=1)).ravel()[order], rarity[order]))]
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    targets = fractions[:, None] * totals[None, :]  # (splits, labels)
    placed = np.zeros_like(targets)
    split = np.empty(len(group_names), dtype=object)
    for index in order:
        row = slice(matrix.indptr[index], matrix.indptr[index + 1])
        columns, values = matrix.indices[row], matrix.data[row]
        deficit = (targets[:, columns] - placed[:, columns]).sum(axis=1) / np.maximum(fractions, 1e-9)
        deficit[fractions == 0] = -np.inf  # a split with no share never takes a group
        chosen = int(np.argmax(deficit))
        placed[chosen, columns] += values
        split[index] = SPLITS[chosen]
    return pd.Series(split[group_codes], index=label_lists.index, name="split")


def stratified_split(frame: pd.DataFrame, *, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """The grouped stratified split of `frame`'s rows: by its `labels` lists when it has that column
    (multi-label), else by its `label`."""
    if "labels" in frame:
        return grouped_multilabel_split(frame["labels"], frame["group"], val_fraction=val_fraction,
                                        test_fraction=test_fraction, seed=seed)
    return grouped_stratified_split(frame["label"], frame["group"], val_fraction=val_fraction,
                                    test_fraction=test_fraction, seed=seed)


def pick_val_groups(groups: pd.Series, test: np.ndarray, spec, seed: int, test_source: str) -> list[str]:
    """The validation groups of `data.val_groups=spec`: a list names them, an integer n draws n
    (seeded by `seed`) from the groups with no clip in the test split (`test`: a boolean mask).

    Refused with a one-line `ConfigError`: an unknown group, a group with test clips
    (`test_source` says where the test split comes from), or no group left to train on.
    """
    known = sorted(set(groups.astype(str)))
    in_test = set(groups[test].astype(str))
    candidates = [g for g in known if g not in in_test]
    shown = f"data.val_groups={spec if isinstance(spec, int) else [str(g) for g in spec]}"
    if isinstance(spec, int):
        if spec >= len(candidates):
            raise ConfigError(f"{shown}: only {len(candidates)} groups have no clip in the test split ({test_source});"
                              f" validation needs fewer, so that at least one group trains")
        order = np.random.default_rng(seed).permutation(len(candidates))
        return sorted(candidates[i] for i in order[:spec])
    names = [str(g) for g in spec]
    unknown = [g for g in names if g not in known]
    if unknown:
        preview = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
        raise ConfigError(f"{shown}: unknown group {unknown[0]!r}; the groups are {preview}")
    tested = [g for g in names if g in in_test]
    if tested:
        raise ConfigError(f"{shown}: group {tested[0]!r} has clips in the test split ({test_source}); "
                          "a validation group must be one the test split does not hold")
    if len(set(names)) >= len(candidates):
        raise ConfigError(f"{shown}: leaves no group to train on")
    return sorted(set(names))


def val_group_splits(frame: pd.DataFrame, test: np.ndarray | None, spec, *, test_fraction: float, seed: int,
                     test_source: str) -> pd.Series:
    """Splits where validation is whole groups (`pick_val_groups`): their clips are `val`, the test
    split is `test` (a mask) or, if None, a grouped stratified `test_fraction` of the other groups;
    every other clip trains."""
    fixed = np.zeros(len(frame), dtype=bool) if test is None else test
    chosen = pick_val_groups(frame["group"], fixed, spec, seed, test_source)
    val = frame["group"].astype(str).isin(chosen).to_numpy()
    split = np.where(fixed, "test", "train").astype(object)
    if test is None:
        rest = frame.loc[~val]
        split[~val] = stratified_split(rest, val_fraction=0.0, test_fraction=test_fraction, seed=seed).to_numpy()
    split[val] = "val"
    return pd.Series(split, index=frame.index, name="split")
