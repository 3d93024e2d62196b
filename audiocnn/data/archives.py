"""Extract a dataset archive (zip or tar) into a folder: all of it, safely, or nothing.

`extract(archive, target)` unpacks into a scratch folder `.<target name>-extract-<random>`
beside `target` and renames the content into place in one `os.replace`, so `target` either
holds the whole dataset or does not exist. An archive with a single top-level folder
(`ESC-50-master/`) is unwrapped. Every problem is one `DownloadError` line, and the scratch
folder is deleted:
- a corrupt or truncated archive (`EOFError`, `tarfile.ReadError`, `zipfile.BadZipFile`,
  a bad CRC, ...): "broken or truncated archive";
- a member that would land outside the folder (absolute path, `..`), a device or FIFO, or a
  link (symbolic or hard: datasets hold files and folders only, and links are how archives
  escape their folder or loop into themselves): refused before anything is written, naming
  the member (tar members also pass tarfile's `filter="data"`);
- more content than allowed (`ArchiveLimitError`): the members' declared sizes are summed
  before extracting, and the bytes actually written are counted while extracting; the limit
  is the smaller of `max_bytes` and `max_ratio` times the archive's size (a zip bomb of a
  few MB of zeros stops at once).
"""

from __future__ import annotations

import lzma
import math
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from audiocnn.errors import ArchiveLimitError, DownloadError

DEFAULT_MAX_BYTES = 50 * 2**30  # data.download.max_bytes
DEFAULT_MAX_RATIO = 100  # data.download.max_ratio: audio barely compresses; deflated zeros reach ~1000x

# Why tarfile's "data" filter refused a member, in the user's words.
REFUSALS = {
    tarfile.AbsolutePathError: "an absolute path",
    tarfile.OutsideDestinationError: "a path outside the dataset folder",
    tarfile.SpecialFileError: "a device, FIFO or other special file",
    tarfile.AbsoluteLinkError: "a link to an absolute path",
    tarfile.LinkOutsideDestinationError: "a link to outside the dataset folder",
}
# What a corrupt, truncated or unreadable archive raises while it is read.
BROKEN = (EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError,
          ValueError, OSError)


def scratch_prefix(target: Path) -> str:
    """The name prefix of `target`'s scratch folders (a killed extraction leaves one behind)."""
    return f".{target.name}-extract-"


class _Budget:
    """The most bytes an extraction may write, and the setting that says so."""

    def __init__(self, archive: Path, max_bytes: int | None, max_ratio: float | None):
        size = archive.stat().st_size
        limits = [(math.inf, "")]
        if max_bytes is not None:
            limits.append((max_bytes, f"data.download.max_bytes={max_bytes}"))
        if max_ratio is not None:
            limits.append((max_ratio * size, f"data.download.max_ratio={max_ratio:g} times the archive's {size} "
                                             f"bytes"))
        self.limit, self.setting = min(limits)
        self.archive, self.written = archive.name, 0

    def declared(self, total: int) -> None:
        if total > self.limit:
            raise ArchiveLimitError(f"{self.archive}: its members declare {total} bytes, more than {self.setting}; "
                                    f"nothing was extracted (raise that setting if you trust this archive)")

    def wrote(self, path: Path) -> None:
        self.written += path.lstat().st_size
        if self.written > self.limit:
            raise ArchiveLimitError(f"{self.archive}: extraction stopped after writing {self.written} bytes, more "
                                    f"than {self.setting}; nothing was kept (raise that setting if you trust it)")


def _refuse(archive: Path, member: str, reason: str) -> DownloadError:
    return DownloadError(f"{archive.name}: refused member {member!r}: {reason}; nothing was extracted")


def _check_name(archive: Path, name: str) -> None:
    """Refuse a member name that is absolute or climbs with '..' (zipfile and tarfile's filter
    would strip a leading '/', and zipfile every '..': such an archive is refused instead)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute():
        raise _refuse(archive, name, "an absolute path")
    if ".." in path.parts:
        raise _refuse(archive, name, "a path outside the dataset folder ('..')")


def _extract_zip(archive: Path, scratch: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        for info in infos:
            _check_name(archive, info.filename)
        budget.declared(sum(info.file_size for info in infos))
        for info in infos:  # zipfile stops at a member's declared size; a lie then fails its CRC
            path = Path(bundle.extract(info, scratch))
            if not info.is_dir():
                budget.wrote(path)


def _extract_tar(archive: Path, scratch: Path, budget: _Budget) -> None:
    with tarfile.open(archive) as bundle:
        members = bundle.getmembers()
        for member in members:
            _check_name(archive, member.name)
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise _refuse(archive, member.name, f"a {kind} link (-> {member.linkname!r}); a dataset archive holds "
                                                    f"files and folders only")
        budget.declared(sum(member.size for member in members if member.isreg()))
        for member in members:
            bundle.extract(member, scratch, filter="data")  # and tarfile's own checks: no devices, ...
            if member.isreg():
                budget.wrote(scratch / member.name)


def extract(archive: Path, target: Path, max_bytes: int | None = DEFAULT_MAX_BYTES,
            max_ratio: float | None = DEFAULT_MAX_RATIO) -> Path:
    """Unpack `archive` (zip, tar, tar.gz, ...) so that its content ends up as `target`, atomically."""
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix(target), dir=target.parent))
    try:
        budget = _Budget(archive, max_bytes, max_ratio)
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, scratch, budget)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, scratch, budget)
        else:
            raise DownloadError(f"{archive.name}: not a readable zip or tar archive (truncated, or not an archive)")
        entries = [p for p in scratch.iterdir() if not p.name.startswith("._")]  # macOS resource forks
        single = len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink()
        os.replace(entries[0] if single else scratch, target)
    except DownloadError:
        raise
    except tarfile.FilterError as error:
        reason = REFUSALS.get(type(error), type(error).__name__)
        raise _refuse(archive, error.tarinfo.name, reason) from None
    except BROKEN as error:
        detail = f"{type(error).__name__}: {error}".replace(str(scratch), "<folder>").splitlines()[0]
        what = "could not be extracted" if isinstance(error, OSError) and error.errno else \
            "broken or truncated archive"  # an errno: the disk (full, permissions), not the archive
        raise DownloadError(f"{archive.name}: {what} ({detail}); nothing was extracted") from None
    finally:  # on success only the emptied wrapper folder is left; on failure, everything extracted
        shutil.rmtree(scratch, ignore_errors=True)
    return target
