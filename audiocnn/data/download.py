"""Download and verify a dataset archive and unpack it into `paths.raw`, never leaving half a dataset.

A known dataset's config holds `download.url` and `download.checksum` (`"sha256:<hex>"` or
`"md5:<hex>"`, whichever its publisher or a reference loader lists). `dataset_root` returns
`data.root` when the user points at an existing copy; otherwise the dataset lives in
`<paths.raw>/<data.name>/` and is fetched the first time, holding that folder's writer lock
(`atomic.folder_lock`, waiting up to `lock_timeout_s` for another process fetching it):

0. under the lock, a scratch folder `.<name>-extract-*` or a `.part` file of this dataset
   can only be the leftover of a killed run: it is deleted;
1. the archive streams to `<paths.raw>/.downloads/<file>.part` (tqdm progress bar); the bytes
   received are counted against the server's `Content-Length`. A transfer cut short ("received
   N of M bytes (the transfer was cut)") or stalled (no byte for `data.download.timeout_s`)
   deletes the `.part` and raises `DownloadError`; only a complete transfer is renamed to
   `<file>`, with `<file>.json` recording its URL and size. An archive found there is reused
   only when that record matches it (one from an older version or another URL is fetched again);
2. its checksum is verified; a mismatch after a complete transfer deletes the archive and
   raises `DownloadError` naming the URL and both checksums (the file is not the one the
   config names: the transfer itself was whole);
3. `archives.extract` unpacks it atomically, within `data.download.max_bytes` / `max_ratio`;
   a broken or hostile archive is deleted (a rerun downloads it again); one that only
   exceeds the limit is kept, for a rerun with a higher limit.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from audiocnn import atomic
from audiocnn.data.archives import DEFAULT_MAX_BYTES, DEFAULT_MAX_RATIO, extract, scratch_prefix
from audiocnn.errors import ArchiveLimitError, DownloadError

CHUNK = 1 << 20
ALGORITHMS = ("sha256", "md5")
DEFAULT_TIMEOUT_S = 60  # data.download.timeout_s: a transfer that sends nothing for this long has stalled


def parse_checksum(spec: str) -> tuple[str, str]:
    """`"sha256:ab12..."` -> `("sha256", "ab12...")`."""
    algorithm, _, digest = str(spec).partition(":")
    if algorithm not in ALGORITHMS or not digest:
        raise DownloadError(f"checksum {spec!r}: write it as '<algorithm>:<hex digest>' with algorithm in {ALGORITHMS}")
    return algorithm, digest.lower()


def record_path(dest: Path) -> Path:
    """`<file>.json` beside a completely received `<file>`: `{"url": ..., "bytes": ..., "announced": ...}`."""
    return dest.with_name(dest.name + ".json")


def discard(dest: Path) -> None:
    """Delete a downloaded archive and its record."""
    dest.unlink(missing_ok=True)
    record_path(dest).unlink(missing_ok=True)


def _recorded(dest: Path, url: str) -> dict | None:
    """The record of `dest` when it says `dest` is a complete transfer of `url`, else None."""
    try:
        record = json.loads(record_path(dest).read_text())
        return record if record["url"] == url and record["bytes"] == dest.stat().st_size else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _announced(response) -> int | None:
    try:
        return int(response.headers.get("Content-Length") or 0) or None
    except ValueError:
        return None


def _after(received: int, total: int | None) -> str:
    return f" after {received} of {total or 'an unknown number of'} bytes; nothing was kept" if received else ""


def _transfer(url: str, dest: Path, progress: bool, timeout_s: float) -> dict:
    """Stream `url` to `dest` via `dest.part`; `dest` appears only when every announced byte arrived."""
    part = dest.with_name(dest.name + ".part")
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(part, "wb") as out:
            total = _announced(response)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                      disable=not progress) as bar:
                while block := response.read1(CHUNK):  # what has arrived, up to CHUNK
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
        if total is not None and received != total:
            raise DownloadError(f"download of {url} failed: received {received} of {total} bytes (the transfer was "
                                f"cut); nothing was kept, run again to retry")
        os.replace(part, dest)
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException) as error:
        if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
            raise DownloadError(f"download of {url} stalled: no data for data.download.timeout_s={timeout_s:g} s "
                                f"after {received} of {total or 'an unknown number of'} bytes; nothing was kept, "
                                f"run again to retry") from None
        if isinstance(error, http.client.IncompleteRead):  # a chunked answer (no Content-Length) ended early
            raise DownloadError(f"download of {url} failed: received {received} bytes, then the transfer was cut "
                                f"(a chunk was incomplete); nothing was kept, run again to retry") from None
        raise DownloadError(f"download of {url} failed: {error}{_after(received, total)}") from None
    except OSError as error:  # socket errors (connection reset, ...) and the disk
        raise DownloadError(f"download of {url} failed: {error}{_after(received, total)}") from None
    finally:
        part.unlink(missing_ok=True)
    record = {"url": url, "bytes": received, "announced": total}
    atomic.write_json(record_path(dest), record)
    return record


def fetch(url: str, dest: Path, checksum: str | None, progress: bool = True,
          timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download `url` to `dest` (via `dest.part`) and verify `checksum`; reuse a recorded complete `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithm, expected = parse_checksum(checksum) if checksum else ("sha256", None)
    record = _recorded(dest, url) if dest.exists() else None
    if dest.exists() and record is None:
        print(f"download: {dest.name} has no record of a complete download of {url}; downloading it again")
        discard(dest)
    if record is None:
        record = _transfer(url, dest, progress, timeout_s)
    if expected is not None:
        with open(dest, "rb") as handle:
            actual = hashlib.file_digest(handle, algorithm).hexdigest()
        if actual != expected:
            discard(dest)
            whole = (f"all {record['bytes']} bytes the server announced arrived" if record.get("announced")
                     else f"the server sent {record['bytes']} bytes without announcing a size")
            raise DownloadError(f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; {whole}, "
                                f"so the file served is not the one the config names (the download was deleted; "
                                f"check data.download.url and data.download.checksum)")
    return dest


def _remove_leftovers(target: Path, part: Path) -> None:
    """Delete the scratch folders and `.part` file of `target` (call holding its lock: they are a killed run's)."""
    for stale in [*target.parent.glob(scratch_prefix(target) + "*"), part]:
        if stale.exists():
            print(f"download: removing {stale.name}, left by an interrupted run")
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()


def dataset_root(data_cfg, raw_root: Path, progress: bool = True, lock_timeout_s: float = 300.0) -> Path:
    """The folder holding the dataset: `data.root`, or `<raw_root>/<name>` (downloaded if missing)."""
    if data_cfg.get("root"):
        return Path(data_cfg.root)
    target = Path(raw_root) / data_cfg.name
    if target.is_dir():
        return target
    spec = data_cfg.get("download") or {}
    if not spec.get("url"):
        raise DownloadError(f"data.root is not set and data={data_cfg.name} has no download.url; "
                            f"set data.root to your copy")
    filename = Path(urlparse(spec["url"]).path).name or f"{data_cfg.name}.archive"
    archive = Path(raw_root) / ".downloads" / filename
    with atomic.folder_lock(target, lock_timeout_s, "lock_timeout_s", "download"):
        if target.is_dir():  # another process made it while this one waited
            return target
        _remove_leftovers(target, archive.with_name(archive.name + ".part"))
        fetch(spec["url"], archive, spec.get("checksum"), progress, spec.get("timeout_s", DEFAULT_TIMEOUT_S))
        try:
            extract(archive, target, spec.get("max_bytes", DEFAULT_MAX_BYTES), spec.get("max_ratio", DEFAULT_MAX_RATIO))
        except ArchiveLimitError:
            raise  # the archive is whole: kept, so a rerun with a higher limit does not download it again
        except DownloadError:
            discard(archive)  # broken or hostile: a rerun downloads it again
            raise
        discard(archive)  # the extracted folder is what DVC tracks; the archive would double the disk use
    return target
