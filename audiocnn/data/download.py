"""Fetch a dataset archive (pooch) and unpack it into `paths.raw`, never leaving half a dataset.

A known dataset's config holds `download.url` and `download.checksum` (`"sha256:<hex>"` or
`"md5:<hex>"`: pooch's `known_hash`). `dataset_root` returns `data.root` when set; otherwise the
dataset is `<paths.raw>/<data.name>/`, fetched the first time holding that folder's writer lock
(`atomic.folder_lock`, waiting up to `lock_timeout_s` for another process fetching it):

0. anything in `<paths.raw>/.downloads/<name>/` but the archive (pooch's temporary files, an
   archive of another URL), and scratch folders `.<name>-extract-*`, are leftovers: deleted;
1. `pooch.retrieve` streams the archive (`pooch.HTTPDownloader`, tqdm bar) into a temporary file
   there, renamed to `<md5 of the URL>-<file>` (`archive_name`) only when whole and of the
   checksum; an archive found under that name is reused (when it has the checksum). A transfer
   cut short (urllib3 checks `Content-Length`), stalled (no byte for `data.download.timeout_s`)
   or of another checksum keeps nothing: one `DownloadError` line with the bytes received (a
   stall's, in whole `CHUNK`s) or both checksums;
2. `archives.extract` unpacks it atomically, within `data.download.max_bytes` / `max_ratio`;
   a broken or hostile archive is deleted (a rerun downloads it again); one that only
   exceeds the limit is kept, for a rerun with a higher limit.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pooch
import requests
from tqdm import tqdm
from urllib3.exceptions import IncompleteRead, ProtocolError, ReadTimeoutError

from audiocnn import atomic
from audiocnn.data.archives import extract, scratch_prefix
from audiocnn.data.settings import DEFAULT_TIMEOUT_S, DatasetCopy, parse_checksum
from audiocnn.errors import ArchiveLimitError, DownloadError

CHUNK = 1 << 16  # bytes per read (pooch's chunk_size)
def archive_name(url: str, fallback: str) -> str:
    """`<md5 of url>-<the URL's file name or fallback>` (as pooch names a download): another URL, another file."""
    return f"{hashlib.md5(url.encode()).hexdigest()}-{Path(urlparse(url).path).name or fallback}"


class _Progress(tqdm):
    """pooch's progress bar; pooch sets `total` to the answer's `Content-Length` (0 when not announced)."""

    def __bool__(self) -> bool:  # pooch asks `if progressbar:` before the total is known
        return True


class _Transfer:
    """The downloader `pooch.retrieve` calls with its temporary file: `pooch.HTTPDownloader`, writing
    through this object, which counts and hashes the bytes as they arrive, so that a failure is
    one `DownloadError` line saying how far the transfer got, and a mismatch names both checksums."""

    def __init__(self, checksum: str | None, progress: bool, timeout_s: float, name: str):
        self.algorithm, self.expected = parse_checksum(checksum) if checksum else ("sha256", None)
        self.progress, self.timeout_s, self.name = progress, timeout_s, name
        self.received, self.digest = 0, hashlib.new(self.algorithm)

    def write(self, block: bytes) -> None:
        self.file.write(block)
        self.received += len(block)
        self.digest.update(block)

    def flush(self) -> None:
        self.file.flush()

    def __call__(self, url: str, output_file: str, _pooch) -> None:
        self.bar = _Progress(unit="B", unit_scale=True, desc=f"download {self.name}", disable=not self.progress)
        with self.bar, open(output_file, "wb") as self.file:
            try:
                pooch.HTTPDownloader(progressbar=self.bar, chunk_size=CHUNK, timeout=self.timeout_s)(url, self, None)
            except (requests.RequestException, OSError) as error:  # OSError: the disk
                raise DownloadError(f"download of {url} {self._failure(error)}; nothing was kept, run again to "
                                    f"retry") from None
        actual = self.digest.hexdigest()
        if self.expected is not None and actual != self.expected:
            whole = (f"all {self.received} bytes the server announced arrived" if self.bar.total
                     else f"the server sent {self.received} bytes without announcing a size")
            raise DownloadError(f"checksum mismatch for {url}: expected {self.algorithm} {self.expected}, got "
                                f"{actual}; {whole}, so the file served is not the one the config names (the "
                                f"download was deleted; check data.download.url and data.download.checksum)")

    def _failure(self, error: OSError) -> str:
        """What went wrong, and after how many of how many bytes."""
        total = self.bar.total or "an unknown number of"  # pooch sets 0 when there is no Content-Length
        cause = next(iter(error.args), None)
        if isinstance(error, requests.Timeout) or isinstance(cause, ReadTimeoutError):
            return (f"stalled: no data for data.download.timeout_s={self.timeout_s:g} s after {self.received} of "
                    f"{total} bytes")
        if isinstance(error, requests.exceptions.ChunkedEncodingError):  # the body ended early
            # urllib3 counts what arrived (`IncompleteRead.partial`); in a chunked answer a cut chunk's
            # bytes (http.client's `IncompleteRead.partial`) come on top of those written
            cut = cause.args[-1] if isinstance(cause, ProtocolError) and cause.args else None
            arrived = cut.partial if isinstance(cut, IncompleteRead) else self.received + len(
                getattr(cut, "partial", b""))
            return (f"failed: received {arrived} of {total} bytes (the transfer was cut)" if self.bar.total else
                    f"failed: received {arrived} bytes, then the transfer was cut (a chunk was incomplete)")
        return f"failed: {error}" + (f" after {self.received} of {total} bytes" if self.received else "")


def fetch(url: str, dest: Path, checksum: str | None, progress: bool = True,
          timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download `url` to `dest` (pooch: via a temporary file beside it, renamed only when whole and of
    `checksum`); an existing `dest` is reused when it has the checksum (or none is given)."""
    dest = Path(dest)
    transfer = _Transfer(checksum, progress, timeout_s, dest.name)
    known_hash = f"{transfer.algorithm}:{transfer.expected}" if checksum else None
    pooch.retrieve(url, known_hash, fname=dest.name, path=dest.parent, downloader=transfer)
    return dest


def _remove_leftovers(target: Path, archive: Path) -> None:
    """Delete the scratch folders of `target` and everything beside `archive` but it (pooch's temporary
    files, other URLs' archives). Call holding `target`'s lock: they are a killed run's or stale."""
    stale = [*target.parent.glob(scratch_prefix(target) + "*"), *(p for p in archive.parent.glob("*") if p != archive)]
    for path in stale:
        print(f"download: removing {path.name}, left by an earlier run")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def dataset_root(data: DatasetCopy, raw_root: Path, progress: bool = True, lock_timeout_s: float = 300.0) -> Path:
    """The folder holding the dataset: `data.root`, or `<raw_root>/<name>` (downloaded if missing)."""
    if data.root:
        return Path(data.root)
    target = Path(raw_root) / data.name
    if target.is_dir():
        return target
    spec = data.download
    if spec is None:
        raise DownloadError(f"data.root is not set and data={data.name} has no download.url; "
                            f"set data.root to your copy")
    archive = Path(raw_root) / ".downloads" / data.name / archive_name(spec.url, f"{data.name}.archive")
    with atomic.folder_lock(target, lock_timeout_s, "lock_timeout_s", "download"):
        if target.is_dir():  # another process made it while this one waited
            return target
        _remove_leftovers(target, archive)
        fetch(spec.url, archive, spec.checksum, progress, spec.timeout_s)
        try:
            extract(archive, target, spec.max_bytes, spec.max_ratio)
        except ArchiveLimitError:
            raise  # the archive is whole: kept, so a rerun with a higher limit does not download it again
        except DownloadError:
            archive.unlink()  # broken or hostile: a rerun downloads it again
            raise
        shutil.rmtree(archive.parent)  # the extracted folder is what DVC tracks; the archive would double the disk use
    return target
