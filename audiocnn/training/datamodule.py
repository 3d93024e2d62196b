"""`StoreDataModule`: train/val/test loaders over the memory-mapped feature store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from audiocnn.features.featurize import store_dir
from audiocnn.features.store import FeatureStore
from audiocnn.training.windows import WindowDataset, collate_sliding, seed_worker


def load_classes(cfg: DictConfig) -> list[str]:
    return json.loads((Path(cfg.paths.prepared) / "classes.json").read_text())


class StoreDataModule(L.LightningDataModule):
    """Windows of `features.window_frames` frames; labels are indices into classes.json."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.classes = load_classes(cfg)
        self.store = FeatureStore(store_dir(cfg))
        self.floor = math.log(cfg.features.amin)
        lookup = {name: i for i, name in enumerate(self.classes)}
        self.labels = self.store.index["label"].map(lookup).to_numpy()
        if np.isnan(self.labels.astype(float)).any():
            raise RuntimeError(f"feature store {self.store.root} has labels outside classes.json; rerun featurize")

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.store.index["split"].to_numpy() == split)

    def dataset(self, split: str, mode: str) -> WindowDataset:
        rows = self.rows(split)
        return WindowDataset(self.store, rows, self.labels[rows], self.cfg.features.window_frames, mode,
                             self.floor, seed=self.cfg.seed)

    def _loader(self, dataset, shuffle: bool, **kwargs) -> DataLoader:
        workers = self.cfg.trainer.num_workers
        return DataLoader(dataset, batch_size=self.cfg.trainer.batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, worker_init_fn=seed_worker if workers else None,
                          **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", "random"), shuffle=True, drop_last=len(self.rows("train")) >
                            self.cfg.trainer.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val", "center"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", "sliding"), shuffle=False, collate_fn=collate_sliding)
