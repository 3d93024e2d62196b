"""Reopening a store folder for writing: keep what is sound, drop what is not, wipe what is foreign.

Called by featurize while it holds the store's lock, so nobody else writes the folder. A
store of the same parameters and clips is kept: its finished shards are checked against
the records written with them (sizes always; checksums on a resume or when asked), the
shards that fail are dropped, and featurize then featurizes only the clips it lacks. A
store of other clips (another manifest: the folder name does not cover the clips) or of
another writer count is wiped and rebuilt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from audiocnn import atomic
from audiocnn.features.store import CHECKSUM, check_shards, drop_shard, finished_shards


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
