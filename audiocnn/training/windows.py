"""Fixed-size windows cut from stored clips of any length.

Train: one random window per clip per epoch. Validation: the centred window. Test:
every window of a sliding grid (hop = half a window), whose logits are averaged per clip.
Short clips are padded with the log floor, i.e. with silence.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from audiocnn.features.store import FeatureStore

MODES = ("random", "center", "sliding")


def window_starts(length: int, window: int, mode: str, rng: np.random.Generator | None = None) -> list[int]:
    """Start frames of the windows to cut from a clip of `length` frames."""
    slack = length - window
    if slack <= 0:
        return [0]
    if mode == "random":
        return [int((rng or np.random.default_rng()).integers(0, slack + 1))]
    if mode == "center":
        return [slack // 2]
    hop = max(window // 2, 1)
    starts = list(range(0, slack + 1, hop))
    if starts[-1] != slack:
        starts.append(slack)  # the last window ends on the clip's last frame
    return starts


def cut_window(frames: np.ndarray, start: int, window: int, floor: float) -> np.ndarray:
    """(length, n_bins) frames -> (n_bins, window) float32, padded with `floor`."""
    piece = np.asarray(frames[start: start + window], dtype=np.float32)
    if len(piece) < window:
        piece = np.concatenate([piece, np.full((window - len(piece), piece.shape[1]), floor, np.float32)])
    return piece.T


class WindowDataset(Dataset):
    """Rows of a `FeatureStore` as windows: item -> (x, label).

    random/center: x is `(1, n_bins, window)`. sliding: x is `(n_windows, 1, n_bins, window)`.
    """

    def __init__(self, store: FeatureStore, rows: np.ndarray, labels: np.ndarray, window: int,
                 mode: str, floor: float, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; allowed: {MODES}")
        self.store, self.rows, self.labels = store, rows, labels
        self.window, self.mode, self.floor, self.seed = window, mode, floor, seed
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int):
        frames = self.store.frames(int(self.rows[item]))
        starts = window_starts(len(frames), self.window, self.mode, self.rng)
        windows = np.stack([cut_window(frames, s, self.window, self.floor) for s in starts])[:, None]
        x = torch.from_numpy(windows if self.mode == "sliding" else windows[0])
        return x, int(self.labels[item])


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own window RNG (otherwise all draw the same crops)."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    dataset.rng = np.random.default_rng([dataset.seed, worker_id, torch.initial_seed() % 2**32])


def collate_sliding(items):
    """[(windows (n_i, 1, F, W), label)] -> ((sum n_i, 1, F, W), labels (B,), counts (B,))."""
    windows, labels = zip(*items)
    return torch.cat(windows), torch.tensor(labels), torch.tensor([len(w) for w in windows])
