"""Windows cut from stored clips, and the DataModule that serves them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from audiocnn.settings import store_settings
from audiocnn.features.featurize import store_dir
from audiocnn.features.store import FeatureStore
from audiocnn.experiment import data_module
from audiocnn.training.windows import WindowDataset, collate_sliding, cut_window, window_starts


def test_random_starts_stay_inside_the_clip_and_follow_the_rng():
    starts = [window_starts(100, 30, "random", np.random.default_rng(seed))[0] for seed in range(200)]
    assert min(starts) >= 0 and max(starts) <= 70
    assert len(set(starts)) > 20  # actually random
    assert window_starts(100, 30, "random", np.random.default_rng(7)) == window_starts(
        100, 30, "random", np.random.default_rng(7))


def test_center_start():
    assert window_starts(100, 30, "center") == [35]
    assert window_starts(101, 30, "center") == [35]


@pytest.mark.parametrize("length, window", [(100, 30), (90, 30), (31, 30), (1000, 128), (129, 128), (50, 1)])
def test_sliding_starts_hop_half_a_window_and_cover_the_last_frame(length, window):
    starts = window_starts(length, window, "sliding")
    assert starts[0] == 0
    assert starts[-1] == length - window  # the last window ends on the last frame
    hop = max(window // 2, 1)
    assert all(b - a == hop for a, b in zip(starts[:-2], starts[1:-1]))
    if len(starts) > 1:
        assert 0 < starts[-1] - starts[-2] <= hop
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start: start + window] = True
    assert covered.all()


@pytest.mark.parametrize("mode", ["random", "center", "sliding"])
def test_a_clip_shorter_than_a_window_starts_at_zero(mode):
    assert window_starts(20, 30, mode, np.random.default_rng(0)) == [0]
    assert window_starts(30, 30, mode, np.random.default_rng(0)) == [0]


def test_cut_window_transposes_and_pads_with_the_floor():
    frames = np.arange(5 * 3, dtype=np.float16).reshape(5, 3)  # (length, n_bins)
    piece = cut_window(frames, 0, 8, floor=-9.0)
    assert piece.shape == (3, 8) and piece.dtype == np.float32
    np.testing.assert_array_equal(piece[:, :5], frames.T.astype(np.float32))
    assert (piece[:, 5:] == -9.0).all()
    middle = cut_window(frames, 1, 3, floor=-9.0)
    np.testing.assert_array_equal(middle, frames[1:4].T.astype(np.float32))


@pytest.fixture(scope="module")
def store(prepared_store) -> FeatureStore:
    return FeatureStore(store_dir(store_settings(prepared_store)))


@pytest.mark.parametrize("mode", ["random", "center", "sliding"])
def test_window_dataset_shapes(store, mode):
    window = 32  # shorter than every clip, so sliding gives several windows
    rows = np.arange(6)
    labels = np.arange(6) % 3
    dataset = WindowDataset(store, rows, labels, window, mode, floor=math.log(1e-4))
    assert len(dataset) == 6
    for item in range(len(dataset)):
        x, y = dataset[item]
        assert x.dtype == torch.float32 and y == labels[item]
        frames = store.frames(int(rows[item]))
        if mode == "sliding":
            n = len(window_starts(len(frames), window, "sliding"))
            assert n > 1 and x.shape == (n, 1, store.n_bins, window)
            np.testing.assert_array_equal(x[-1, 0].numpy(), frames[-window:].T.astype(np.float32))
        else:
            assert x.shape == (1, store.n_bins, window)
        if mode == "center":
            start = (len(frames) - window) // 2
            np.testing.assert_array_equal(x[0].numpy(), frames[start: start + window].T.astype(np.float32))


def test_window_dataset_pads_short_clips_and_rejects_unknown_modes(store):
    length = int(store.index.loc[0, "length"])
    dataset = WindowDataset(store, np.array([0]), np.array([0]), length + 10, "center", floor=-9.0)
    x, _ = dataset[0]
    assert x.shape == (1, store.n_bins, length + 10)
    assert (x[0, :, length:] == -9.0).all()
    with pytest.raises(ValueError, match="mode='middle'"):
        WindowDataset(store, np.array([0]), np.array([0]), 8, "middle", floor=-9.0)


def test_collate_sliding_concatenates_windows_and_counts_them():
    items = [(torch.zeros(2, 1, 4, 8), 1), (torch.ones(3, 1, 4, 8), 0)]
    windows, labels, counts = collate_sliding(items)
    assert windows.shape == (5, 1, 4, 8)
    assert labels.tolist() == [1, 0] and counts.tolist() == [2, 3]
    assert windows[2:].eq(1).all()


def test_datamodule_loaders_give_windows_and_labels(prepared_store):
    cfg = prepared_store
    module = data_module(cfg)
    n_classes, n_bins, window = len(module.classes), cfg.features.n_bins, cfg.features.window_frames
    for loader in (module.train_dataloader(), module.val_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and x.shape[1:] == (1, n_bins, window)
        assert 0 < len(x) <= cfg.trainer.batch_size and y.shape == (len(x),)
        assert y.min() >= 0 and y.max() < n_classes
    windows, labels, counts = next(iter(module.test_dataloader()))
    assert windows.dtype == torch.float32 and windows.shape[1:] == (1, n_bins, window)
    assert int(counts.sum()) == len(windows) and len(counts) == len(labels)
    assert labels.min() >= 0 and labels.max() < n_classes
    # Labels are the class index of the clip's label.
    first_test = module.rows("test")[0]
    assert module.classes[int(labels[0])] == module.store.index.loc[first_test, "label"]


def test_datamodule_splits_are_disjoint_and_follow_the_manifest(prepared_store):
    module = data_module(prepared_store)
    train, val, test = (set(module.rows(s).tolist()) for s in ("train", "val", "test"))
    assert train and val and test
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(len(module.store)))
    manifest = pd.read_csv(f"{prepared_store.paths.prepared}/manifest.csv")
    for split, rows in (("train", train), ("val", val), ("test", test)):
        assert set(module.store.index.loc[sorted(rows), "path"]) == set(manifest.loc[manifest.split == split, "path"])
    # Groups do not leak across splits either.
    groups = manifest.groupby("group")["split"].nunique()
    assert (groups == 1).all()


@pytest.mark.parametrize("window", [16, 4096])  # inside every clip / longer than every clip (padded)
def test_a_batch_is_the_windows_cut_one_by_one(store, window):
    rows = np.arange(len(store))
    dataset = WindowDataset(store, rows, rows % 3, window, "center", floor=-9.0)
    x, y = dataset.__getitems__(list(range(len(rows))))
    assert x.shape == (len(rows), 1, store.n_bins, window) and x.dtype == torch.float32 and x.is_contiguous()
    for item in range(len(rows)):
        one, label = dataset[item]
        torch.testing.assert_close(x[item], one, rtol=0, atol=0)
        assert y[item] == label


def test_random_batches_stay_inside_each_clip(store):
    window = 16
    rows = np.arange(len(store))
    dataset = WindowDataset(store, rows, rows, window, "random", floor=-9.0, seed=3)
    x, _ = dataset.__getitems__(list(rows))
    for item, row in enumerate(rows):
        frames = store.frames(int(row)).astype(np.float32)
        starts = [s for s in range(len(frames) - window + 1)
                  if np.array_equal(frames[s: s + window].T, x[item, 0].numpy())]
        assert starts  # the window is some crop of the clip
