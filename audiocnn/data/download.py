"""Download, verify and extract a dataset archive into `paths.raw`, never leaving half a dataset.

A known dataset's config holds `download.url` and `download.checksum` (`"sha256:<hex>"` or
`"md5:<hex>"`, whichever its publisher or a reference loader lists). `dataset_root` returns
`data.root` when the user points at an existing copy; otherwise the dataset lives in
`<paths.raw>/<data.name>/` and is fetched the first time:

1. the archive streams to `<paths.raw>/.downloads/<file>.part` with a tqdm progress bar and
   is renamed to `<file>` once complete (an interrupted download never looks finished);
2. its checksum is verified; a mismatch deletes the archive and raises `DownloadError`
   naming the URL and both checksums;
3. it is extracted into a temporary folder beside the target and renamed into place in one
   `os.replace`, so `<paths.raw>/<data.name>/` either holds the whole dataset or does not
   exist. An archive with a single top-level folder (`ESC-50-master/`) is unwrapped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from audiocnn.errors import DownloadError

CHUNK = 1 << 20
ALGORITHMS = ("sha256", "md5")


def parse_checksum(spec: str) -> tuple[str, str]:
    """`"sha256:ab12..."` -> `("sha256", "ab12...")`."""
    algorithm, _, digest = str(spec).partition(":")
    if algorithm not in ALGORITHMS or not digest:
        raise DownloadError(f"checksum {spec!r}: write it as '<algorithm>:<hex digest>' with algorithm in {ALGORITHMS}")
    return algorithm, digest.lower()


def fetch(url: str, dest: Path, checksum: str | None, progress: bool = True) -> Path:
    """Download `url` to `dest` (via `dest.part`) and verify `checksum`; reuse a verified `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithm, expected = parse_checksum(checksum) if checksum else ("sha256", None)
    if not dest.exists():
        part = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                          disable=not progress) as bar:
                    while block := response.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
        except OSError as error:  # URLError, HTTPError and socket errors are all OSErrors
            part.unlink(missing_ok=True)
            raise DownloadError(f"download of {url} failed: {error}") from None
        os.replace(part, dest)
    if expected is not None:
        with open(dest, "rb") as handle:
            actual = hashlib.file_digest(handle, algorithm).hexdigest()
        if actual != expected:
            dest.unlink()
            raise DownloadError(f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual} "
                                f"(the download was deleted; check data.download in the config)")
    return dest


def extract(archive: Path, target: Path) -> Path:
    """Unpack `archive` (zip, tar, tar.gz, ...) so that its content ends up as `target`, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-extract-", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(scratch)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                bundle.extractall(scratch, filter="data")  # no absolute paths, links out or devices
        else:
            raise DownloadError(f"{archive}: not a zip or tar archive")
        entries = [p for p in scratch.iterdir() if not p.name.startswith("._")]  # macOS resource forks
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else scratch
        os.replace(content, target)
    finally:  # on success only the emptied wrapper folder is left; on failure, everything extracted
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def dataset_root(data_cfg, raw_root: Path, progress: bool = True) -> Path:
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
    archive = fetch(spec["url"], Path(raw_root) / ".downloads" / filename, spec.get("checksum"), progress)
    extract(archive, target)
    archive.unlink()  # the extracted folder is what DVC tracks; the archive would double the disk use
    return target
