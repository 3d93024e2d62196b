"""`WindowDataModule`: train/val/test loaders of windows, from the feature store or on the fly.

Each clip's split comes from the current manifest (the store holds none), so re-splitting
the data (another fold) reuses the store. With `features.on_the_fly=true` there is no
store: the loaders give waveform windows and the model's front-end computes the CQT.
Under DDP (attached to a Trainer of several processes) each loader serves this process's
share of the clips (`training.distributed`), and each process draws its own crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from audiocnn.errors import MissingInputError
from audiocnn.data.events import read_prepared_events
from audiocnn.data.prepare import EVENTS, read_classes, read_manifest
from audiocnn.data.task import is_multilabel
from audiocnn.data.sources._common import LABEL_SEPARATOR
from audiocnn.features.featurize import store_dir
from audiocnn.features.settings import StoreSettings
from audiocnn.features.store import FeatureStore, clips_md5
from audiocnn.training import distributed
from audiocnn.training.sampling import BalancedSampler, rare_label_weights
from audiocnn.training.windows import (AudioClips, EventWaveformWindowDataset, EventWindowDataset,
                                       WaveformWindowDataset, WindowDataset, already_batched, seed_worker)


def multi_hot(label_lists, classes: list[str]) -> np.ndarray:
    """`;`-joined label lists (the manifest's `labels` cells) -> `(clips, n_classes)` float32 0/1 targets;
    None where a label is not in `classes`. An empty cell (an event-free strong clip) is a row of zeros."""
    lookup = {name: i for i, name in enumerate(classes)}
    targets = np.zeros((len(label_lists), len(classes)), dtype=np.float32)
    for row, cell in enumerate(label_lists):
        if cell == "":
            continue
        columns = [lookup.get(name) for name in str(cell).split(LABEL_SEPARATOR)]
        if None in columns:
            return None
        targets[row, columns] = 1.0
    return targets


@dataclass(frozen=True)
class LoaderSettings:
    """How the loaders batch windows (`trainer.batch_size`, `trainer.num_workers`, `trainer.sampler`:
    shuffle | balanced) and `seed`, which draws the training crops and the balanced sampler's clips."""
    batch_size: int
    num_workers: int = 0
    sampler: str = "shuffle"
    seed: int = 0


class WindowDataModule(L.LightningDataModule):
    """Windows of `features.window_frames` frames; labels are indices into classes.json `(clips,)` int64,
    or for multi-label and event data (`task` "multilabel" or "events") 0/1 targets `(clips, n_classes)`
    float32 (an event clip's weak labels). For the events task the train and val windows carry frame targets
    too (`training.windows.EventWindowDataset`: the events of `paths.prepared/events.tsv`, at the output rate
    of a model of `time_stride` CQT frames per output frame; the train stage sets `time_stride` from the
    model before any loader is made).

    Made from the feature store's settings (`store_settings`: the front-end, the manifest folder, the
    store's folder) and the loaders' (`loader`). `self.store` is the `FeatureStore` (or, on the fly, the
    manifest's `AudioClips`); its
    `index` rows are the clips, `rows(split)` picks a split's rows. Its state in a checkpoint is
    the training windows' generator (`trainer.num_workers=0`; workers seed their own), so that a
    resumed training draws the windows the uninterrupted one would have.
    """

    def __init__(self, store_settings: StoreSettings, loader: LoaderSettings, time_stride: int | None = None):
        super().__init__()
        self.time_stride = time_stride  # events task: CQT frames per output frame of the model
        self.features, self.prepared, self.loader = store_settings.features, store_settings.prepared, loader
        self.on_the_fly = self.features.on_the_fly
        self.classes, self.task = read_classes(self.prepared)
        manifest = read_manifest(self.prepared)
        if self.on_the_fly:
            self.store = AudioClips(manifest, self.features.sr, self.features.hop_length)
        else:
            self.store = FeatureStore(store_dir(store_settings))
            if self.store.meta.get("clips_md5") != clips_md5(manifest):
                raise MissingInputError(f"feature store {self.store.root} holds other clips than the manifest; "
                                        "run the featurize stage again")
        self.floor = math.log(self.features.amin)
        # The store's clip_id is the manifest row; clips featurize skipped have no row.
        self.splits = manifest["split"].to_numpy()[self.store.index["clip_id"].to_numpy()]
        self.labels = self._labels(manifest)
        if self.events_task:
            self.clip_events, self.strong = self._events(manifest)
            self.durations = manifest["duration"].to_numpy(dtype=np.float64)[self.store.index["clip_id"].to_numpy()]
        self.train_set = None
        self._window_state: dict | None = None  # from a checkpoint, for the next training set

    @property
    def multilabel(self) -> bool:
        """A sigmoid per class and multi-hot labels: multi-label and event data."""
        return is_multilabel(self.task)

    @property
    def events_task(self) -> bool:
        return self.task == EVENTS

    def _events(self, manifest) -> tuple[list, np.ndarray]:
        """Per store row: its clip's events (`paths.prepared/events.tsv`) and whether the clip is strong
        (the manifest's `annotation`)."""
        paths = manifest["path"].to_numpy()[self.store.index["clip_id"].to_numpy()]
        if "annotation" not in manifest:
            raise MissingInputError(f"paths.prepared={self.prepared}: classes.json says task=events but "
                                    "the manifest has no annotation column; run the prepare stage again")
        strong = manifest["annotation"].to_numpy()[self.store.index["clip_id"].to_numpy()] == "strong"
        by_path = read_prepared_events(self.prepared)
        return [by_path.get(str(path), []) for path in paths], strong

    def _labels(self, manifest) -> np.ndarray:
        """The store's clips' labels: class indices, or multi-hot targets from the manifest's `labels`."""
        if self.multilabel:
            labels = None
            if "labels" in manifest:
                labels = multi_hot(manifest["labels"].to_numpy()[self.store.index["clip_id"].to_numpy()], self.classes)
        else:
            labels = self.store.index["label"].map({name: i for i, name in enumerate(self.classes)})
            labels = None if labels.isna().any() else labels.to_numpy(dtype=np.int64)
        if labels is None:
            raise MissingInputError(f"{self.store_name} has labels outside classes.json; run the prepare and "
                                    "featurize stages again")
        return labels

    @property
    def store_name(self) -> str:
        return "the manifest" if self.on_the_fly else f"feature store {self.store.root}"

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def ranks(self) -> tuple[int, int]:
        """(this process's rank, number of processes) of the Trainer using the loaders; (0, 1) without one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def dataset(self, split: str, mode: str):
        rows, window, seed = self.rows(split), self.features.window_frames, self.loader.seed
        rank = self.ranks()[0]
        # the same crops as one process on rank 0; every other process its own
        seed = seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
        if self.events_task and mode != "sliding":
            if self.time_stride is None:
                raise ValueError("WindowDataModule: the events task's windows need the model's time_stride")
            targets = ([self.clip_events[r] for r in rows], self.strong[rows], self.classes, self.time_stride,
                       self.features.hop_length / self.features.sr)
            if self.on_the_fly:
                return EventWaveformWindowDataset(self.store, rows, self.labels[rows], window, mode, *targets,
                                                  seed=seed)
            return EventWindowDataset(self.store, rows, self.labels[rows], window, mode, self.floor, *targets,
                                      seed=seed)
        if self.on_the_fly:
            return WaveformWindowDataset(self.store, rows, self.labels[rows], window, mode, seed=seed)
        return WindowDataset(self.store, rows, self.labels[rows], window, mode, self.floor, seed=seed)

    def _loader(self, dataset, shuffle: bool, **kwargs) -> DataLoader:
        workers = self.loader.num_workers
        return DataLoader(dataset, batch_size=self.loader.batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, worker_init_fn=seed_worker if workers else None,
                          collate_fn=already_batched, pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        self.train_set = self.dataset("train", "random")
        if self._window_state is not None:  # resumed from a checkpoint: the crops go on where they were
            self.train_set.rng.bit_generator.state = self._window_state
        dataset, (rank, world) = self.train_set, self.ranks()
        batch = self.loader.batch_size
        if self.loader.sampler == "balanced":
            distributed.check_enough(len(dataset), world)
            weights = rare_label_weights(self.labels[self.rows("train")], len(self.classes))
            sampler = BalancedSampler(weights, rank, world, self.loader.seed)
            return self._loader(dataset, shuffle=False, sampler=sampler, drop_last=len(sampler) > batch)
        if world == 1:
            return self._loader(dataset, shuffle=True, drop_last=len(dataset) > batch)
        sampler = distributed.train_sampler(len(dataset), rank, world, self.loader.seed)
        return self._loader(dataset, shuffle=False, sampler=sampler, drop_last=len(sampler) > batch)

    def state_dict(self) -> dict:
        if self.train_set is None or self.loader.num_workers:
            return {}
        return {"train_windows": self.train_set.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._window_state = state.get("train_windows")

    def val_dataloader(self) -> DataLoader:
        dataset, (rank, world) = self.dataset("val", "center"), self.ranks()
        if world == 1:
            return self._loader(dataset, shuffle=False)
        return self._loader(dataset, shuffle=False, sampler=distributed.StridedSampler(len(dataset), rank, world))

    def sliding_dataloader(self, split: str) -> DataLoader:
        """Every sliding window of each clip of `split`, batches of (windows, labels, windows per clip)."""
        return self._loader(self.dataset(split, "sliding"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.sliding_dataloader("test")
