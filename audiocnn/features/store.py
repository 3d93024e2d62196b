"""Feature store: float16 CQT frames in shards, read back by memory mapping.

Layout of one store folder (its name carries a hash of the parameters that shaped it):
    store.json            parameters, hash, manifest checksum, shard list, `complete`
    shard-00000.f16       raw float16 frames, shape (frames, n_bins), clips back to back
    shard-00000.csv       the index rows of that shard
    index.csv             all rows: clip_id,path,label,split,shard,start,length
A shard and its csv are written under temporary names and renamed, so a killed writer
leaves only finished shards, which a restart reuses.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from audiocnn import atomic

INDEX_COLUMNS = ["clip_id", "path", "label", "split", "shard", "start", "length"]
# Labels are names, even when they look like numbers (FSDD's digits).
TEXT_COLUMNS = {"path": str, "label": str, "split": str, "fold": str, "group": str}
DTYPE = np.float16


def params_hash(params: dict) -> str:
    """Short stable hash of a parameter dict."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class ShardWriter:
    """Appends clips' frames to shards of at most ~`shard_bytes`; memory use is one clip.

    `first_shard` continues the numbering after the shards an earlier run finished.
    """

    def __init__(self, root: Path, n_bins: int, shard_bytes: int, first_shard: int = 0):
        self.root, self.n_bins, self.shard_bytes = root, n_bins, shard_bytes
        self.shard = first_shard
        self.rows: list[dict] = []
        self.frames = 0
        self.handle = None

    def _tmp(self) -> Path:
        return self.root / f".{shard_name(self.shard)}.f16.tmp"

    def add(self, clip: dict, frames: np.ndarray) -> None:
        """Append `frames` (length, n_bins) for `clip` (a manifest row with clip_id)."""
        if self.handle is None:
            self.handle = open(self._tmp(), "wb")
        self.handle.write(np.ascontiguousarray(frames, dtype=DTYPE).tobytes())
        self.rows.append({**clip, "shard": self.shard, "start": self.frames, "length": len(frames)})
        self.frames += len(frames)
        if self.frames * self.n_bins * np.dtype(DTYPE).itemsize >= self.shard_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        """Finish the open shard: flush, fsync, rename, then write its index csv."""
        if self.handle is None:
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self._tmp(), self.root / f"{shard_name(self.shard)}.f16")
        with atomic.atomic_path(self.root / f"{shard_name(self.shard)}.csv") as tmp:
            pd.DataFrame(self.rows, columns=INDEX_COLUMNS).to_csv(tmp, index=False)
        self.handle, self.rows, self.frames = None, [], 0
        self.shard += 1


def finished_shards(root: Path) -> list[pd.DataFrame]:
    """Index frames of the shards that were completely written, in shard order."""
    done = []
    for index in range(10**5):
        csv, data = root / f"{shard_name(index)}.csv", root / f"{shard_name(index)}.f16"
        if not (csv.exists() and data.exists()):
            break
        done.append(pd.read_csv(csv, dtype=TEXT_COLUMNS))
    return done


class FeatureStore:
    """Read side: the index and memory-mapped shards of a complete store.

    `frames(i)` returns the (length, n_bins) float16 frames of index row i as a view
    into the mapped shard: nothing is loaded until it is read, so RAM does not grow with
    the dataset.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "store.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no feature store at {self.root} (run the featurize stage)")
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise RuntimeError(f"feature store {self.root} is incomplete; rerun featurize to resume it")
        self.n_bins = int(self.meta["params"]["n_bins"])
        self.index = pd.read_csv(self.root / "index.csv", dtype=TEXT_COLUMNS)
        self._locations = self.index[["shard", "start", "length"]].to_numpy(dtype=np.int64)
        self._shards: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.index)

    def shard(self, number: int) -> np.memmap:
        if number not in self._shards:
            path = self.root / f"{shard_name(number)}.f16"
            self._shards[number] = np.memmap(path, dtype=DTYPE, mode="r").reshape(-1, self.n_bins)
        return self._shards[number]

    def frames(self, row: int) -> np.ndarray:
        shard, start, length = self._locations[row]
        return self.shard(int(shard))[start: start + length]

    def __getstate__(self):  # DataLoader workers re-open the maps lazily
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state
