"""Feature store: float16 CQT frames in shards, read back by memory mapping.

Layout of one store folder (its name carries a hash of the parameters that shaped it):
    store.json            parameters, the clip list's checksum, `complete`, counts
    shard-00000.f16       raw float16 frames, shape (frames, n_bins), clips back to back
    shard-00000.csv       the index rows of that shard
    index.csv             all rows, by clip_id: clip_id,path,label,shard,start,length
A shard and its csv are written under temporary names and renamed, so a killed writer
leaves only finished shards, which a restart reuses. With several writers
(`torchrun`), rank r of w writes `shard-r{r}of{w}-00000.f16`, ... instead.

The store holds no split or fold: it depends only on the clips (path, label) and the
feature parameters, and readers take each clip's split from the current manifest, so
re-splitting the data never re-featurizes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from audiocnn import atomic

INDEX_COLUMNS = ["clip_id", "path", "label", "shard", "start", "length"]
# Labels are names, even when they look like numbers (FSDD's digits); folds too.
TEXT_COLUMNS = {"path": str, "label": str, "split": str, "group": str, "fold": str, "shard": str}
DTYPE = np.float16


def params_hash(params: dict) -> str:
    """Short stable hash of a parameter dict."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def clips_md5(manifest: pd.DataFrame) -> str:
    """Checksum of what a store depends on in a manifest: the clips' paths and labels, in order."""
    digest = hashlib.md5()
    for path, label in zip(manifest["path"], manifest["label"]):
        digest.update(f"{path}\t{label}\n".encode())
    return digest.hexdigest()


def shard_prefix(rank: int = 0, world: int = 1) -> str:
    return "shard-" if world == 1 else f"shard-r{rank}of{world}-"


def shard_name(index: int, prefix: str = "shard-") -> str:
    return f"{prefix}{index:05d}"


class ShardWriter:
    """Appends clips' frames to shards of at most ~`shard_bytes`; memory use is one piece.

    A clip may arrive in several pieces (`add(..., last=False)` then `last=True`): they
    go to the same shard, back to back, and the clip gets one index row. `first_shard`
    continues the numbering after the shards an earlier run finished.
    """

    def __init__(self, root: Path, n_bins: int, shard_bytes: int, first_shard: int = 0, prefix: str = "shard-"):
        self.root, self.n_bins, self.shard_bytes, self.prefix = root, n_bins, shard_bytes, prefix
        self.shard = first_shard
        self.rows: list[dict] = []
        self.frames = 0  # frames in the open shard
        self.clip_start = None  # first frame of the clip being written
        self.handle = None

    def _tmp(self) -> Path:
        return self.root / f".{shard_name(self.shard, self.prefix)}.f16.tmp"

    def add(self, clip: dict, frames: np.ndarray, last: bool = True) -> None:
        """Append `frames` (length, n_bins) of `clip` (clip_id, path, label)."""
        if self.handle is None:
            self.handle = open(self._tmp(), "wb")
        if self.clip_start is None:
            self.clip_start = self.frames
        self.handle.write(np.ascontiguousarray(frames, dtype=DTYPE).tobytes())
        self.frames += len(frames)
        if not last:
            return
        self.rows.append({**clip, "shard": shard_name(self.shard, self.prefix), "start": self.clip_start,
                          "length": self.frames - self.clip_start})
        self.clip_start = None
        if self.frames * self.n_bins * np.dtype(DTYPE).itemsize >= self.shard_bytes:
            self.close_shard()

    def abandon_clip(self) -> None:
        """Drop the clip being written (a piece failed); its frames stay as unused bytes."""
        self.clip_start = None

    def close_shard(self) -> None:
        """Finish the open shard: flush, fsync, rename, then write its index csv."""
        if self.handle is None:
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        name = shard_name(self.shard, self.prefix)
        os.replace(self._tmp(), self.root / f"{name}.f16")
        with atomic.atomic_path(self.root / f"{name}.csv") as tmp:
            pd.DataFrame(self.rows, columns=INDEX_COLUMNS).to_csv(tmp, index=False)
        self.handle, self.rows, self.frames = None, [], 0
        self.shard += 1


def finished_shards(root: Path, prefix: str = "shard-") -> list[pd.DataFrame]:
    """Index rows of the shards with `prefix` that were completely written, in shard order."""
    done = []
    for index in range(10**5):
        name = shard_name(index, prefix)
        if not ((root / f"{name}.csv").exists() and (root / f"{name}.f16").exists()):
            break
        done.append(pd.read_csv(root / f"{name}.csv", dtype=TEXT_COLUMNS))
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
        codes, self.shard_names = pd.factorize(self.index["shard"])
        self._locations = np.stack([codes, self.index["start"], self.index["length"]], axis=1).astype(np.int64)
        self._shards: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.index)

    def shard(self, name: str | int) -> np.memmap:
        """The mapped shard `name` (its file stem, or its number in `shard_names`): `(frames, n_bins)`."""
        code = name if isinstance(name, (int, np.integer)) else int(self.shard_names.get_loc(name))
        if code not in self._shards:
            path = self.root / f"{self.shard_names[code]}.f16"
            self._shards[code] = np.memmap(path, dtype=DTYPE, mode="r").reshape(-1, self.n_bins)
        return self._shards[code]

    def location(self, row: int) -> tuple[int, int, int]:
        """(shard number, first frame, length) of index row `row`."""
        shard, start, length = self._locations[row]
        return int(shard), int(start), int(length)

    def frames(self, row: int) -> np.ndarray:
        shard, start, length = self.location(row)
        return self.shard(shard)[start: start + length]

    def __getstate__(self):  # DataLoader workers re-open the maps lazily
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state
