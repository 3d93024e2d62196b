"""Atomic file writes (a temporary name in the same folder, then rename) and writer locks.

A temporary name carries the writer's pid, so two processes never share one. A folder
that several processes may write (`paths.prepared`, a feature store) is written under
`folder_lock`: an exclusive lock file next to the folder, `.<name>.lock`, and a
`.<name>.lock.owner` file saying who holds it (pid, host, start time, command). A second
writer waits for the lock, printing who holds it, and gives up after `timeout_s` with
`LockedError` naming the holder. The operating system releases the lock of a process
that dies, so a killed writer never leaves a folder locked.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from audiocnn.errors import LockedError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def lock_paths(folder: str | Path) -> tuple[Path, Path]:
    """(lock file, owner file) of `folder`: `.<name>.lock` and `.<name>.lock.owner` beside it."""
    folder = Path(folder)
    lock = folder.parent / f".{folder.name}.lock"
    return lock, lock.with_name(lock.name + ".owner")


def lock_holder(folder: str | Path) -> str:
    """Who holds `folder`'s lock, from its owner file: `pid 123 on host since 2025-01-01 12:00:00 (cmd)`."""
    owner = lock_paths(folder)[1]
    try:
        who = json.loads(owner.read_text())
        return f"pid {who['pid']} on {who['host']} since {who['started']} ({who['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (no readable {owner.name})"


@contextmanager
def folder_lock(folder: str | Path, timeout_s: float, setting: str, stage: str) -> Iterator[None]:
    """Hold the writer lock of `folder` for the block; wait up to `timeout_s` s for another holder.

    `setting` is the config key of the timeout and `stage` the writer's name, for the messages.
    """
    lock_file, owner = lock_paths(folder)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        settle = time.monotonic() + 1.0  # the holder writes its owner file just after taking the lock
        while not owner.exists() and time.monotonic() < settle:
            time.sleep(0.05)
        print(f"{stage}: waiting up to {setting}={timeout_s:g} s for {folder}, which {lock_holder(folder)} "
              "is writing", flush=True)
        try:
            lock.acquire(timeout=timeout_s, poll_interval=0.2)
        except Timeout:
            raise LockedError(f"{folder}: still being written by {lock_holder(folder)} after {setting}="
                              f"{timeout_s:g} s; wait for it to finish (or stop it), or raise {setting}") from None
    try:
        write_json(owner, {"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S%z"), "command": " ".join(sys.argv)[:500]})
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
