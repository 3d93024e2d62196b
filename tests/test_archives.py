"""Hostile and broken archives: each case builds its own tiny archive; `extract` refuses it in one
`DownloadError` line and leaves nothing behind (no target, no scratch folder, nothing outside)."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from audiocnn.data.archives import extract
from audiocnn.errors import ArchiveLimitError, DownloadError

ZEROS = 20 * 2**20  # 20 MB of zeros deflate to about 20 KB


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w") as bundle:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            bundle.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _member(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _zip(path: Path, *members: tuple[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members:
            info = zipfile.ZipInfo(name)  # ZipInfo keeps the name as given ('../x', '/x')
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, data)
    return path


def _leaves_nothing(tmp_path: Path, archive: Path) -> None:
    """Only the archive is left: no target, no scratch folder, nothing written outside."""
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == sorted(
        [archive.name, "raw"]), "something was left"


def _refusal(archive: Path, tmp_path: Path, **limits) -> str:
    with pytest.raises(DownloadError) as error:
        extract(archive, tmp_path / "raw" / "ds", **limits)
    message = str(error.value)
    assert "\n" not in message
    _leaves_nothing(tmp_path, archive)
    return message


HOSTILE = {
    "tar ../ member": (lambda p: _tar(p, (_member("ds/a.txt"), b"a"), (_member("../evil.txt"), b"x")),
                       "refused member '../evil.txt': a path outside the dataset folder"),
    "tar ds/../../ member": (lambda p: _tar(p, (_member("ds/../../evil.txt"), b"x")),
                             "refused member 'ds/../../evil.txt': a path outside"),
    "tar absolute member": (lambda p: _tar(p, (_member("/tmp/evil.txt"), b"x")),
                            "refused member '/tmp/evil.txt': an absolute path"),
    "tar symlink out": (lambda p: _tar(p, (_member("ds/passwd", tarfile.SYMTYPE, "/etc/passwd"), b"")),
                        "refused member 'ds/passwd': a symbolic link (-> '/etc/passwd')"),
    "tar symlink up": (lambda p: _tar(p, (_member("ds/up", tarfile.SYMTYPE, "../.."), b"")),
                       "refused member 'ds/up': a symbolic link"),
    "tar hard link": (lambda p: _tar(p, (_member("ds/a.txt"), b"a"), (_member("ds/b", tarfile.LNKTYPE, "ds/a.txt"),
                                                                        b"")),
                      "refused member 'ds/b': a hard link"),
    "tar character device": (lambda p: _tar(p, (_member("ds/tty", tarfile.CHRTYPE), b"")),
                             "refused member 'ds/tty': a device, FIFO or other special file"),
    "tar fifo": (lambda p: _tar(p, (_member("ds/pipe", tarfile.FIFOTYPE), b"")),
                 "refused member 'ds/pipe': a device, FIFO or other special file"),
    "zip ../ member": (lambda p: _zip(p, ("ds/a.txt", b"a"), ("../../evil.txt", b"x")),
                       "refused member '../../evil.txt': a path outside the dataset folder"),
    "zip absolute member": (lambda p: _zip(p, ("/tmp/evil.txt", b"x")),
                            "refused member '/tmp/evil.txt': an absolute path"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_member_is_refused_in_one_line_naming_it(case, tmp_path):
    build, expected = HOSTILE[case]
    archive = build(tmp_path / ("a.zip" if case.startswith("zip") else "a.tar"))
    assert expected in _refusal(archive, tmp_path)


def test_a_tar_whose_only_entry_is_a_symlink_to_dot_makes_no_loop_in_raw(tmp_path):
    archive = _tar(tmp_path / "loop.tar", (_member("x", tarfile.SYMTYPE, "."), b""))
    assert "refused member 'x': a symbolic link (-> '.')" in _refusal(archive, tmp_path)
    assert [p for p in (tmp_path / "raw").rglob("*") if p.is_symlink()] == []


def _zeros_zip(path: Path, size: int = ZEROS) -> Path:
    return _zip(path, ("bomb/zeros.bin", bytes(size)))


@pytest.mark.parametrize("limits, setting", [
    ({"max_bytes": 2**20, "max_ratio": None}, "more than data.download.max_bytes=1048576"),
    ({"max_bytes": None}, "more than data.download.max_ratio=100 times the archive's"),  # the default ratio
])
def test_a_zip_bomb_is_refused_before_anything_is_written_naming_the_setting(limits, setting, tmp_path):
    archive = _zeros_zip(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 100_000
    with pytest.raises(ArchiveLimitError) as error:
        extract(archive, tmp_path / "raw" / "ds", **limits)
    assert f"bomb.zip: its members declare {ZEROS} bytes, {setting}" in str(error.value)
    _leaves_nothing(tmp_path, archive)


def test_a_big_archive_within_the_limits_is_extracted(tmp_path):
    archive = _zeros_zip(tmp_path / "big.zip", 2**20)
    target = extract(archive, tmp_path / "raw" / "ds", max_bytes=2**20, max_ratio=None)
    assert (target / "zeros.bin").stat().st_size == 2**20


def _lie_about_sizes(path: Path, declared: int) -> None:
    """Rewrite every uncompressed-size field (local header and central directory) of a one-member zip."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset:at + offset + 4] = struct.pack("<I", declared)
    path.write_bytes(bytes(data))


def test_a_zip_that_lies_about_its_sizes_writes_no_more_than_declared_and_fails(tmp_path):
    archive = _zeros_zip(tmp_path / "liar.zip")
    _lie_about_sizes(archive, 1000)
    with zipfile.ZipFile(archive) as bundle:
        assert bundle.infolist()[0].file_size == 1000  # passes the declared-size check ...
    message = _refusal(archive, tmp_path, max_bytes=2**20)
    assert "liar.zip: broken or truncated archive (BadZipFile: Bad CRC-32" in message  # ... and fails its CRC


def _fsdd_like(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for index in range(20):
            data = bytes(range(256)) * 40 + str(index).encode()
            info = tarfile.TarInfo(f"ds/recordings/{index}.wav")
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


BROKEN = {
    "tar.gz cut in the middle": (lambda p: p.write_bytes(_fsdd_like(p).read_bytes()[:1500]),
                                 "broken or truncated archive (EOFError: Compressed file ended"),
    "tar cut in a member's data": (lambda p: p.write_bytes(_tar(p, (_member("ds/a.txt"), b"a" * 3000),
                                                                (_member("ds/b.txt"), b"b")).read_bytes()[:2000]),
                                   "broken or truncated archive (ReadError: unexpected end of data)"),
    "zip without its central directory's tail": (
        lambda p: p.write_bytes(_zip(p, ("ds/a.txt", b"a" * 1000), ("ds/b.txt", b"b")).read_bytes()[:-60]),
        "not a readable zip or tar archive (truncated, or not an archive)"),
    "zip with damaged data": (lambda p: _damage(_zip(p, ("ds/a.txt", bytes(range(256)) * 100)), at=60),
                              "broken or truncated archive ("),
    "an HTML page": (lambda p: p.write_text("<html>rate limit exceeded</html>"),
                     "not a readable zip or tar archive"),
}


def _damage(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + 40] = bytes(40)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_archive_is_one_error_line_and_leaves_nothing(case, tmp_path):
    build, expected = BROKEN[case]
    archive = tmp_path / ("a.zip" if case.startswith("zip") else "a.tar.gz" if "gz" in case else "a.tar")
    build(archive)
    assert expected in _refusal(archive, tmp_path)


def test_the_bytes_written_are_counted_against_the_limit_too(tmp_path):
    """zipfile and tarfile stop at a member's declared size, so the declared check already bounds what they
    write; the count of bytes written is the second line, checked here on real files."""
    from audiocnn.data.archives import _Budget

    archive = tmp_path / "a.zip"
    archive.write_bytes(bytes(1000))
    written = tmp_path / "member.bin"
    written.write_bytes(bytes(600))
    budget = _Budget(archive, max_bytes=1000, max_ratio=None)
    budget.wrote(written)
    with pytest.raises(ArchiveLimitError, match="a.zip: extraction stopped after writing 1200 bytes, more than "
                                                "data.download.max_bytes=1000"):
        budget.wrote(written)
