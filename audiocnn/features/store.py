"""Feature store: float16 CQT frames in shards, read back by memory mapping.

Layout of one store folder (its name carries a hash of the parameters that shaped it):
    store.json            parameters, the clip list's checksum, `complete`, counts, and
                          `shard_files`: every shard's size in bytes and blake2b checksum
    shard-00000.f16       raw float16 frames, shape (frames, n_bins), clips back to back
    shard-00000.csv       the index rows of that shard
    shard-00000.json      the shard's record, written last: bytes, blake2b, rows, frames
    index.csv             all rows, by clip_id: clip_id,path,label,shard,start,length
A shard and its csv are written under temporary names (with the writer's pid) and
renamed, and its record last, so a killed writer leaves only finished shards (all three
files), which a restart checks against their records and reuses. With several writers
(`torchrun`), rank r of w writes `shard-r{r}of{w}-00000.f16`, ... instead.

The checksum is taken over the bytes as they are written (no second read). Readers check
every shard's size against `shard_files` when they open the store (a stat per shard);
featurize checks sizes always and checksums on resume or with `features.verify=true`,
and rewrites only the shards that fail (`check_shards`, `drop_shard`).

Reopening a store folder for writing (`open_store`, called by featurize while it holds the store's
lock, so nobody else writes the folder): a store of the same parameters and clips is kept, less the
shards that fail their check, and featurize then featurizes only the clips it lacks. A store of other
clips (another manifest: the folder name does not cover the clips) or of another writer count is
wiped and rebuilt.

The store holds no split or fold: it depends only on the clips (path, label) and the
feature parameters, and readers take each clip's split from the current manifest, so
re-splitting the data never re-featurizes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from audiocnn import atomic
from audiocnn.errors import MissingInputError, StoreError

INDEX_COLUMNS = ["clip_id", "path", "label", "shard", "start", "length"]
# Labels are names, even when they look like numbers (FSDD's digits); folds too.
TEXT_COLUMNS = {"path": str, "label": str, "split": str, "group": str, "fold": str, "shard": str}
DTYPE = np.float16
CHECKSUM = "blake2b"  # 128-bit blake2b of a shard's bytes (hashlib; fast, and in the standard library)


def new_checksum():
    return hashlib.blake2b(digest_size=16)


def file_checksum(path: Path) -> str:
    """The checksum of a file's bytes, read block by block."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, new_checksum).hexdigest()


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
    continues the numbering after the shards an earlier run finished. Used as a context
    manager, it finishes the open shard at the end, or deletes it if a write failed (a full
    disk): the shards finished before stay, and nothing half-written is left under any name.
    """

    def __init__(self, root: Path, n_bins: int, shard_bytes: int, first_shard: int = 0, prefix: str = "shard-"):
        self.root, self.n_bins, self.shard_bytes, self.prefix = root, n_bins, shard_bytes, prefix
        self.shard = first_shard
        self.rows: list[dict] = []
        self.frames = 0  # frames in the open shard
        self.clip_start = None  # first frame of the clip being written
        self.handle = None
        self.digest = new_checksum()
        self.bytes = 0  # bytes written to the open shard

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close_shard()
        else:
            self.discard()

    def discard(self) -> None:
        """Delete the shard being written, whichever of its files exist (none is finished: its record,
        written last, is what makes a shard finished)."""
        if self.handle is not None:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                self.handle.close()
            self.handle = None
        self._tmp().unlink(missing_ok=True)
        drop_shard(self.root, shard_name(self.shard, self.prefix))

    def _tmp(self) -> Path:
        return self.root / f".{shard_name(self.shard, self.prefix)}.f16.tmp-{os.getpid()}"

    def add(self, clip: dict, frames: np.ndarray, last: bool = True) -> None:
        """Append `frames` (length, n_bins) of `clip` (clip_id, path, label)."""
        if self.handle is None:
            self.handle = open(self._tmp(), "wb")
        if self.clip_start is None:
            self.clip_start = self.frames
        data = np.ascontiguousarray(frames, dtype=DTYPE).tobytes()
        self.handle.write(data)
        self.digest.update(data)
        self.bytes += len(data)
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
        """Finish the open shard: flush, fsync, rename, write its index csv, then its record."""
        if self.handle is None:
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        name = shard_name(self.shard, self.prefix)
        os.replace(self._tmp(), self.root / f"{name}.f16")
        with atomic.atomic_path(self.root / f"{name}.csv") as tmp:
            pd.DataFrame(self.rows, columns=INDEX_COLUMNS).to_csv(tmp, index=False)
        atomic.write_json(self.root / f"{name}.json", {
            "bytes": self.bytes, CHECKSUM: self.digest.hexdigest(), "rows": len(self.rows), "frames": self.frames})
        self.handle, self.rows, self.frames, self.bytes, self.digest = None, [], 0, 0, new_checksum()
        self.shard += 1


SHARD_FILE = re.compile(r"^(shard-(?:r\d+of\d+-)?)(\d{5})\.json$")


def finished_shards(root: Path) -> dict[str, dict]:
    """{shard name: its record} of every completely written shard (any rank's), by name.

    Finished means its frames, csv and record are all there; numbers may have gaps (a shard
    dropped for repair). `next_shard` numbers new shards after the highest.
    """
    done = {}
    for path in sorted(root.glob("shard-*.json")) if root.exists() else []:
        name = path.stem
        if SHARD_FILE.match(path.name) and (root / f"{name}.csv").exists() and (root / f"{name}.f16").exists():
            try:
                done[name] = json.loads(path.read_text())
            except ValueError:
                continue  # an unreadable record: the shard is not finished
    return done


def next_shard(names, prefix: str) -> int:
    """The number after the highest finished shard with `prefix` (0 if none)."""
    numbers = [int(m.group(2)) for m in map(SHARD_FILE.match, (f"{n}.json" for n in names))
               if m and m.group(1) == prefix]
    return max(numbers, default=-1) + 1


def shard_rows(root: Path, names) -> pd.DataFrame:
    """The index rows of shards `names`, concatenated."""
    frames = [pd.read_csv(root / f"{name}.csv", dtype=TEXT_COLUMNS) for name in names]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)


def shard_problem(root: Path, name: str, record: dict | None, checksum: bool = False) -> str | None:
    """What is wrong with shard `name` against its `record` (None: nothing): missing, size, checksum."""
    path = root / f"{name}.f16"
    if record is None:
        return f"{path.name} has no size and checksum on record"
    if not path.exists():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{path.name} is {size} bytes, {record['bytes']} were written (truncated or replaced)"
    if checksum and file_checksum(path) != record[CHECKSUM]:
        return f"{path.name} does not match the {CHECKSUM} checksum written with it (overwritten or corrupted)"
    return None


def check_shards(root: Path, records: dict[str, dict], checksum: bool) -> dict[str, str]:
    """{shard name: problem} for the shards of `records` whose file does not match its record."""
    problems = {name: shard_problem(root, name, record, checksum) for name, record in records.items()}
    return {name: problem for name, problem in problems.items() if problem}


def drop_shard(root: Path, name: str) -> None:
    """Delete a shard: its record first (so it stops counting as finished), then its csv and frames."""
    for suffix in (".json", ".csv", ".f16"):
        (root / f"{name}{suffix}").unlink(missing_ok=True)


def open_store(root: Path, meta: dict, checksum: bool) -> dict:
    """Keep a store of the same inputs, less the shards that fail their check; wipe anything else.

    Call it holding the store's lock. `meta` is the new store's store.json (not complete);
    the result is the store.json to go on from: the old one when it is complete and sound,
    else `meta`, written (featurize then adds the clips the kept shards lack).
    """
    meta_path = root / "store.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        same = old.get("params") == meta["params"] and old.get("clips_md5") == meta["clips_md5"]
        if same and (old.get("complete") or old.get("world") == meta["world"]):
            if keep_checked_shards(root, old, checksum or not old.get("complete")):
                return old
        else:
            if old.get("params") == meta["params"] and old.get("clips_md5") != meta["clips_md5"]:
                print(f"featurize: {root} holds the clips of another manifest (paths.prepared="
                      f"{old.get('prepared', '?')}); rebuilding it for paths.prepared={meta['prepared']}")
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_json(meta_path, meta)
    return meta


def keep_checked_shards(root: Path, old: dict, checksum: bool) -> bool:
    """Drop every shard that is unfinished or fails its size (and `checksum`) check; True when
    `old` is complete and lost nothing (up to date)."""
    for stale in root.glob(".*.tmp*"):
        stale.unlink()  # a killed writer's temporary files (we hold the lock: nobody else writes)
    records = finished_shards(root)
    for path in root.glob("shard-*"):
        if path.stem not in records:
            path.unlink()  # an unfinished shard's pieces: its clips are featurized again
    problems = check_shards(root, records, checksum)
    for name, problem in problems.items():
        print(f"featurize: {root}: {problem}; featurizing its {records[name].get('rows', '?')} clips again")
        drop_shard(root, name)
    if old.get("complete") and not problems and set(records) == set(old.get("shard_files", [None])):
        if checksum:
            print(f"featurize: {root}: {len(records)} shards match their sizes and {CHECKSUM} checksums")
        return True
    print(f"featurize: {root}: keeping {len(records) - len(problems)} shards (sizes"
          f"{f' and {CHECKSUM} checksums' if checksum else ''} checked); featurizing the clips they lack")
    return False


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
            raise MissingInputError(f"no feature store at {self.root} (run the featurize stage)")
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise StoreError(f"feature store {self.root} is incomplete; rerun featurize to resume it")
        self.n_bins = int(self.meta["params"]["n_bins"])
        self.index = pd.read_csv(self.root / "index.csv", dtype=TEXT_COLUMNS)
        codes, self.shard_names = pd.factorize(self.index["shard"])
        self._locations = np.stack([codes, self.index["start"], self.index["length"]], axis=1).astype(np.int64)
        self._shards: dict[int, np.memmap] = {}
        problem = self.problem()
        if problem:
            raise StoreError(f"feature store {self.root}: {problem}; run the featurize stage again to rewrite it")

    def problem(self, checksum: bool = False) -> str | None:
        """The first shard whose file does not match the size (and `checksum`) recorded at write time."""
        records = self.meta.get("shard_files")
        if records is None:
            return "written without shard sizes and checksums (by an older audiocnn)"
        for name in self.shard_names:
            problem = shard_problem(self.root, name, records.get(name), checksum)
            if problem:
                return problem
        return None

    def path_of(self, row: int) -> str:
        return str(self.index["path"].iat[row])

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
