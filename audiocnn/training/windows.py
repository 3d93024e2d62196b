"""Fixed-size windows cut from clips of any length: stored frames, or waveforms on the fly.

Train: one random window per clip per epoch. Validation: the centred window. Test (and the
temperature fit): every window of the sliding grid (`features.sliding`), scored by `window_logits`,
whose probabilities are voted per clip (`features.sliding.vote`).
Short clips are padded with silence (the log floor for frames, zeros for waveforms).

Datasets here answer a whole batch at once (`__getitems__`, which the DataLoader calls
with the batch's indices): one vectorised pass instead of one Python call per window is
what lets two CPU cores serve tens of thousands of windows per second. Use them with
`collate_fn=already_batched`. Every batch is checked for non-finite values (a damaged
store's NaN frames): `NonFiniteError` names the batch's first bad clip, so training stops
on it instead of learning from NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from audiocnn.errors import NonFiniteError
from audiocnn.features import sliding
from audiocnn.features.cqt import n_frames
from audiocnn.data.audio import clip_samples, load_audio, load_segment
from audiocnn.data.events import frame_targets
from audiocnn.features.store import FeatureStore
from audiocnn.models.scorer import WindowScorer

MODES = ("random", "center", "sliding")
# float16 -> float32 by table lookup (indexed by the half's bits): numpy's and torch's CPU
# casts of float16 run at a few tens of millions of values per second, `np.take` on
# this table at several hundred millions.
HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def window_starts(length: int, window: int, mode: str, rng: np.random.Generator | None = None,
                  hop: int | None = None) -> list[int]:
    """Start frames of the windows to cut from a clip of `length` frames: one random, the centred one,
    or (sliding) the grid every scorer uses, `features.sliding.window_starts`."""
    if mode == "sliding":
        return sliding.window_starts(length, window, hop)
    slack = length - window
    if slack <= 0:
        return [0]
    if mode == "random":
        return [int((rng or np.random.default_rng()).integers(0, slack + 1))]
    return [slack // 2]


def batch_starts(lengths: np.ndarray, window: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """`window_starts` for many clips at once (random or center): one start per clip."""
    slack = np.maximum(lengths - window, 0)
    if mode == "random":
        return np.floor(rng.random(len(lengths)) * (slack + 1)).astype(np.int64)
    return slack // 2


def cut_window(frames: np.ndarray, start: int, window: int, floor: float) -> np.ndarray:
    """(length, n_bins) frames -> (n_bins, window) float32, padded with `floor`."""
    piece = np.take(HALF_TO_FLOAT, np.asarray(frames[start: start + window]).view(np.uint16))
    if len(piece) < window:
        piece = np.concatenate([piece, np.full((window - len(piece), piece.shape[1]), floor, np.float32)])
    return piece.T


def already_batched(batch):
    """collate_fn for datasets whose `__getitems__` returns the finished batch."""
    return batch


def collate_sliding(items):
    """[(windows (n_i, ...), label)] -> ((sum n_i, ...), labels (B,) or (B, n_classes), counts (B,))."""
    windows, labels = zip(*items)
    return torch.cat(windows), torch.from_numpy(np.stack(labels)), torch.tensor([len(w) for w in windows])


class _Windows(Dataset):
    """Shared by the frame and waveform datasets: rows, labels, mode, per-worker RNG."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray, window: int, mode: str, seed: int):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; allowed: {MODES}")
        labels = np.asarray(labels)  # class indices (clips,), or multi-label 0/1 targets (clips, n_classes)
        self.rows, self.labels = np.asarray(rows), labels.astype(np.float32 if labels.ndim == 2 else np.int64)
        self.window, self.mode, self.seed = window, mode, seed
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, items: list[int]):
        """The batch of `items`: (x, labels) or, sliding, (x, labels, windows per clip)."""
        if self.mode == "sliding":
            batch = collate_sliding([self[item] for item in items])
            clip_of_window = np.repeat(np.asarray(items), batch[2].numpy())
        else:
            batch = self.batch(np.asarray(items)), torch.from_numpy(self.labels[items])
            clip_of_window = np.asarray(items)
        self._check_finite(batch[0], clip_of_window)
        return batch

    def _check_finite(self, x: torch.Tensor, clip_of_window: np.ndarray) -> None:
        """`NonFiniteError` naming the clip of the first window of `x` holding a NaN or inf."""
        # A NaN or inf makes its window's sum non-finite (0.1 ms a batch, where torch.isfinite(x).all()
        # takes ~3 ms on one core); a flagged window is confirmed value by value (a finite overflow is not bad).
        windows = x.flatten(1)
        suspects = (~torch.isfinite(windows.sum(dim=1))).nonzero().flatten().tolist()
        bad = [w for w in suspects if not bool(torch.isfinite(windows[w]).all())]
        if bad:
            self._non_finite(int(clip_of_window[bad[0]]))

    def _non_finite(self, item: int):
        row = int(self.rows[item])
        raise NonFiniteError(f"{self.source}: clip {self.index['path'].iat[row]} (row {row}) has non-finite "
                             f"values (NaN or inf) in its window; {self.remedy}")


class WindowDataset(_Windows):
    """Rows of a `FeatureStore` as windows: item -> (x, label).

    random/center: x is `(1, n_bins, window)`. sliding: x is `(n_windows, 1, n_bins, window)`.
    Batches (`__getitems__`): x is `(batch, 1, n_bins, window)` float32.
    """

    def __init__(self, store: FeatureStore, rows: np.ndarray, labels: np.ndarray, window: int,
                 mode: str, floor: float, seed: int = 0):
        super().__init__(rows, labels, window, mode, seed)
        self.store, self.floor = store, floor
        self.index, self.source = store.index, f"feature store {store.root}"
        self.remedy = "the store is damaged: run featurize with features.verify=true to rewrite the bad shards"
        self._plain: dict[int, np.ndarray] = {}

    def __getitem__(self, item: int):
        frames = self.store.frames(int(self.rows[item]))
        starts = window_starts(len(frames), self.window, self.mode, self.rng)
        windows = np.stack([cut_window(frames, s, self.window, self.floor) for s in starts])[:, None]
        x = torch.from_numpy(windows if self.mode == "sliding" else windows[0])
        return x, self.labels[item]

    def _bits(self, shard: int) -> np.ndarray:
        """The mapped shard as a plain uint16 array (slicing a `np.memmap` costs Python overhead)."""
        if shard not in self._plain:
            self._plain[shard] = self.store.shard(shard).view(np.ndarray).view(np.uint16)
        return self._plain[shard]

    def __getstate__(self):  # workers map the shards themselves
        return {**self.__dict__, "_plain": {}}

    def batch_starts(self, items: np.ndarray) -> np.ndarray:
        """The start frame of each item's window (random or center), drawn from the dataset's generator."""
        return batch_starts(self.store._locations[self.rows[items]][:, 2], self.window, self.mode, self.rng)

    def batch(self, items: np.ndarray, starts: np.ndarray | None = None) -> torch.Tensor:
        """The windows of `items` starting at `starts` (None: `batch_starts`) as `(batch, 1, n_bins, window)`."""
        locations = self.store._locations[self.rows[items]]  # (batch, 3): shard, start, length
        if starts is None:
            starts = batch_starts(locations[:, 2], self.window, self.mode, self.rng)
        floor = np.array(self.floor, dtype=np.float16).view(np.uint16)
        out = np.full((len(items), self.window, self.store.n_bins), floor, dtype=np.uint16)  # float16 bits
        for row, ((shard, first, length), start) in enumerate(zip(locations.tolist(), starts.tolist())):
            take = min(self.window, length - start)
            out[row, :take] = self._bits(shard)[first + start: first + start + take]
        # float16 -> float32 and (frames, bins) -> (bins, frames) in one gather.
        return torch.from_numpy(np.take(HALF_TO_FLOAT, out.transpose(0, 2, 1)))[:, None]


def window_frame_targets(events, start: int, hop_seconds: float, n_frames: int, frame_seconds: float,
                         classes: list[str]) -> np.ndarray:
    """`(n_frames, n_classes)` 0/1 targets of a window starting at CQT frame `start`: `data.events.frame_targets`
    of `events` (seconds from the clip's start) shifted by -start * `hop_seconds`, so the window's output
    frame i covers [start·hop + i·frame_seconds, start·hop + (i+1)·frame_seconds) of the clip."""
    shift = start * hop_seconds
    moved = [{"onset": e.onset - shift, "offset": e.offset - shift, "label": e.label} for e in events
             if e.offset > shift]
    return frame_targets(moved, n_frames, frame_seconds, classes)


class _FrameTargets:
    """The events task's frame targets of a window dataset (`EventWindowDataset`,
    `EventWaveformWindowDataset`): `events[i]`, `strong[i]` per item; a window of `window` CQT frames
    starting at frame s has `window // time_stride` output frames of `frame_seconds`
    (`data.events.output_frame_seconds`); its targets are `data.events.frame_targets` of the clip's events
    shifted by -s * `hop_seconds` (one CQT frame's seconds), so output frame i covers
    [s·hop + i·frame_seconds, s·hop + (i+1)·frame_seconds) of the clip, with the rounding rule of
    `frame_targets` (onset floored, offset ceiled). Frames past the clip's end (a padded window) have no
    event; a weak clip's targets are zeros and its `strong` flag false (the loss leaves its frames out)."""

    def _set_events(self, events: list, strong: np.ndarray, classes: list[str], time_stride: int,
                    hop_seconds: float) -> None:
        if len(events) != len(self.rows) or len(strong) != len(self.rows):
            raise ValueError(f"{type(self).__name__}: one event list and one strong flag per row")
        self.events, self.strong = list(events), np.asarray(strong, dtype=bool)
        self.classes, self.time_stride, self.hop_seconds = list(classes), int(time_stride), float(hop_seconds)
        self.n_frames = self.window // self.time_stride
        self.frame_seconds = self.time_stride * self.hop_seconds

    def window_targets(self, item: int, start: int) -> np.ndarray:
        """`(window // time_stride, n_classes)` 0/1 frame targets of item `item`'s window starting at CQT frame
        `start` (zeros for a weak clip)."""
        return window_frame_targets(self.events[item], start, self.hop_seconds, self.n_frames, self.frame_seconds,
                                    self.classes)

    def __getitems__(self, items: list[int]):
        if self.mode == "sliding":
            return super().__getitems__(items)
        items = np.asarray(items)
        starts = self.batch_starts(items)
        x = self.batch(items, starts)
        self._check_finite(x, items)
        frames = np.stack([self.window_targets(int(i), int(s)) for i, s in zip(items, starts)])
        return x, torch.from_numpy(self.labels[items]), torch.from_numpy(frames), torch.from_numpy(self.strong[items])


class EventWindowDataset(_FrameTargets, WindowDataset):
    """`WindowDataset` for the `events` task (docs/events.md): each random or centred window also has its
    frame targets (`_FrameTargets`). `events[i]`: the events of item i (`data.events.Event`s, seconds from
    the clip's start); `strong[i]`: whether item i's clip has timed annotations.
    Batches (`__getitems__`, random/center): `(x (batch, 1, n_bins, window) float32, labels (batch, n_classes)
    float32 0/1 weak labels, frames (batch, window // time_stride, n_classes) float32 0/1, strong (batch,)
    bool)`. Sliding mode is `WindowDataset`'s (clip labels only).
    """

    def __init__(self, store: FeatureStore, rows: np.ndarray, labels: np.ndarray, window: int, mode: str,
                 floor: float, events: list, strong: np.ndarray, classes: list[str], time_stride: int,
                 hop_seconds: float, seed: int = 0):
        super().__init__(store, rows, labels, window, mode, floor, seed)
        self._set_events(events, strong, classes, time_stride, hop_seconds)


class AudioClips:
    """The clips of a manifest read as waveforms (on-the-fly mode's stand-in for a `FeatureStore`).

    `index` has clip_id, path, label like a store's; `segment(row, start, stop)` decodes
    only samples [start, stop) of a clip at `sr`.
    """

    def __init__(self, manifest: pd.DataFrame, sr: int, hop_length: int):
        self.index = manifest[["path", "label"]].reset_index(drop=True)
        self.index.insert(0, "clip_id", np.arange(len(manifest)))
        self.sr, self.hop_length = sr, hop_length

    def __len__(self) -> int:
        return len(self.index)

    def frame_count(self, row: int) -> int:
        """The number of frames the front-end gives for clip `row`."""
        return n_frames(clip_samples(self.index["path"].iat[row], self.sr), self.hop_length)

    def segment(self, row: int, start: int, stop: int) -> torch.Tensor:
        return load_segment(self.index["path"].iat[row], self.sr, start, stop)

    def waveform(self, row: int) -> torch.Tensor:
        """Clip `row` whole at `sr`: `(samples,)` float32."""
        return load_audio(self.index["path"].iat[row], self.sr)


class WaveformWindowDataset(_Windows):
    """Clips as waveform windows whose CQT is the window of frames `WindowDataset` would cut.

    A window of `window` frames starting at frame s is samples [s * hop, (s + window - 1) * hop):
    the front-end turns those `(window - 1) * hop` samples into exactly `window` frames
    centred where the stored ones are (only frames within the kernels' reach of the window's
    edges differ: the stored ones saw the rest of the clip).
    random/center: x is `(samples,)`; sliding: `(n_windows, samples)`; batches `(batch, samples)`.
    """

    def __init__(self, clips: AudioClips, rows: np.ndarray, labels: np.ndarray, window: int, mode: str,
                 seed: int = 0):
        super().__init__(rows, labels, window, mode, seed)
        self.clips = clips
        self.index, self.source = clips.index, "on-the-fly waveforms"
        self.remedy = "the file changed since prepare checked it: run the prepare stage again"
        self.samples = (window - 1) * clips.hop_length

    def _cut(self, row: int, start_frame: int) -> torch.Tensor:
        start = start_frame * self.clips.hop_length
        return self.clips.segment(row, start, start + self.samples)

    def __getitem__(self, item: int):
        row = int(self.rows[item])
        starts = window_starts(self.clips.frame_count(row), self.window, self.mode, self.rng)
        windows = torch.stack([self._cut(row, s) for s in starts])
        return (windows if self.mode == "sliding" else windows[0]), self.labels[item]

    def batch_starts(self, items: np.ndarray) -> np.ndarray:
        """The start frame of each item's window (random or center), drawn from the dataset's generator."""
        lengths = np.array([self.clips.frame_count(int(self.rows[item])) for item in items], dtype=np.int64)
        return batch_starts(lengths, self.window, self.mode, self.rng)

    def batch(self, items: np.ndarray, starts: np.ndarray | None = None) -> torch.Tensor:
        """The waveform windows of `items` starting at frames `starts` (None: `batch_starts`) `(batch, samples)`."""
        if starts is None:
            return torch.stack([self[int(item)][0] for item in items])
        return torch.stack([self._cut(int(self.rows[item]), int(start)) for item, start in zip(items, starts)])


class EventWaveformWindowDataset(_FrameTargets, WaveformWindowDataset):
    """`WaveformWindowDataset` for the `events` task trained on the fly: each random or centred waveform
    window also has the frame targets of the frames the front-end makes of it (`_FrameTargets`; batches as
    `EventWindowDataset`'s with x `(batch, samples)`)."""

    def __init__(self, clips: AudioClips, rows: np.ndarray, labels: np.ndarray, window: int, mode: str,
                 events: list, strong: np.ndarray, classes: list[str], time_stride: int, hop_seconds: float,
                 seed: int = 0):
        super().__init__(clips, rows, labels, window, mode, seed)
        self._set_events(events, strong, classes, time_stride, hop_seconds)


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own window RNG (otherwise all draw the same crops)."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    dataset.rng = np.random.default_rng([dataset.seed, worker_id, torch.initial_seed() % 2**32])


@torch.inference_mode()
def window_logits(scorer: WindowScorer, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every window's logits in `scorer`'s views (`models.scorer`) from a sliding-window loader (batches
    of `collate_sliding`'s `(windows, labels, counts)`): `(n_views, windows, n_classes)` at T = 1,
    labels `(clips,)`, windows per clip."""
    scorer.eval().to(device)
    logits, labels, counts = [], [], []
    for windows, y, n in loader:
        logits.append(scorer.logits(windows.to(device)).float().cpu())
        labels.append(y)
        counts += n.tolist()
    return torch.cat(logits, dim=1), torch.cat(labels), counts
