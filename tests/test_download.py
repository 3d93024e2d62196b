"""Download path: a tiny dataset archive served over HTTP on 127.0.0.1, checksums, atomic extraction."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings
from audiocnn.data.sources import parse_data
from audiocnn.data.download import CHUNK, DownloadError, archive_name, dataset_root, extract, fetch, parse_checksum


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def served(tmp_path):
    """(folder served, base URL): an HTTP server on a free port of 127.0.0.1, in a thread."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _wav_bytes(seconds: float = 0.2, sr: int = 8000) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(seconds * sr)) / sr
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _fsdd_tar(path: Path) -> Path:
    """A release-shaped archive: free-spoken-digit-dataset-1.0.9/recordings/{digit}_{speaker}_{index}.wav."""
    with tarfile.open(path, "w:gz") as bundle:
        for digit in range(2):
            for index in (0, 7, 12):
                data = _wav_bytes()
                info = tarfile.TarInfo(f"free-spoken-digit-dataset-1.0.9/recordings/{digit}_ann_{index}.wav")
                info.size = len(data)
                bundle.addfile(info, io.BytesIO(data))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(raw: Path) -> list[str]:
    """Every file under `raw` but the writer lock's."""
    return sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file() and p.name != ".fsdd.lock")


def test_dataset_root_downloads_verifies_and_extracts_into_raw(served, tmp_path):
    www, url = served
    archive = _fsdd_tar(www / "v1.0.9.tar.gz")
    cfg = parse_data({"name": "fsdd", "root": None,
                            "download": {"url": f"{url}/v1.0.9.tar.gz", "checksum": f"sha256:{_sha256(archive)}"}})
    raw = tmp_path / "raw"
    root = dataset_root(cfg, raw, progress=False)

    assert root == raw / "fsdd"
    assert sorted(p.name for p in (root / "recordings").iterdir()) == sorted(
        f"{d}_ann_{i}.wav" for d in range(2) for i in (0, 7, 12))
    # The single top folder of the archive was unwrapped; no archive, partial file or scratch folder remains
    # (the writer lock's file stays, as beside paths.prepared).
    assert sorted(p.name for p in raw.iterdir()) == [".downloads", ".fsdd.lock", "fsdd"]
    assert list((raw / ".downloads").iterdir()) == []
    # A second call reuses the folder without touching the network.
    archive.unlink()
    assert dataset_root(cfg, raw, progress=False) == root


def test_a_wrong_checksum_names_the_url_and_both_checksums_and_leaves_nothing(served, tmp_path):
    www, url = served
    archive = _fsdd_tar(www / "v1.0.9.tar.gz")
    wrong = "0" * 64
    cfg = parse_data({"name": "fsdd", "root": None,
                            "download": {"url": f"{url}/v1.0.9.tar.gz", "checksum": f"sha256:{wrong}"}})
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError) as error:
        dataset_root(cfg, raw, progress=False)
    message = str(error.value)
    assert f"{url}/v1.0.9.tar.gz" in message and wrong in message and _sha256(archive) in message
    assert "all " in message and " bytes the server announced arrived" in message  # the transfer was whole:
    assert "check data.download.url and data.download.checksum" in message  # the config is blamed
    assert not (raw / "fsdd").exists()
    assert _files(raw) == []  # the bad download was deleted


def test_md5_checksums_work_too(served, tmp_path):
    www, url = served
    (www / "a.bin").write_bytes(b"audio" * 100)
    digest = hashlib.md5(b"audio" * 100).hexdigest()
    assert fetch(f"{url}/a.bin", tmp_path / "a.bin", f"md5:{digest}", progress=False).read_bytes() == b"audio" * 100


def test_a_missing_file_on_the_server_is_a_download_error_without_leftovers(served, tmp_path):
    _, url = served
    with pytest.raises(DownloadError, match="download of .*/nothing.zip failed"):
        fetch(f"{url}/nothing.zip", tmp_path / "dl" / "nothing.zip", None, progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_a_corrupt_archive_leaves_no_half_extracted_folder(tmp_path):
    archive = tmp_path / "broken.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("ds/a.wav", _wav_bytes())
        bundle.writestr("ds/b.wav", _wav_bytes())
    archive.write_bytes(buffer.getvalue()[:-60])  # chop the central directory's tail
    target = tmp_path / "raw" / "ds"
    with pytest.raises(DownloadError, match="broken.zip: not a readable zip or tar archive"):
        extract(archive, target)
    assert not target.exists()
    assert list((tmp_path / "raw").iterdir()) == []


def test_an_archive_without_a_top_folder_becomes_the_dataset_folder(tmp_path):
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as bundle:  # like Speech Commands: words at the top level
        bundle.writestr("yes/a_nohash_0.wav", _wav_bytes())
        bundle.writestr("testing_list.txt", "yes/a_nohash_0.wav\n")
    target = extract(archive, tmp_path / "raw" / "speechcommands")
    assert sorted(p.name for p in target.iterdir()) == ["testing_list.txt", "yes"]
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["speechcommands"]


@pytest.mark.parametrize("spec", ["sha1:abc", "sha256", "deadbeef"])
def test_a_malformed_checksum_is_refused(spec):
    with pytest.raises(DownloadError, match="algorithm"):
        parse_checksum(spec)


def test_every_known_dataset_config_names_a_url_and_a_checksum():
    from audiocnn.config import compose_config

    for name in ("fsdd", "esc50", "urbansound8k", "gtzan", "speechcommands"):
        cfg = compose_config([f"data={name}"])
        assert cfg.data.download.url.startswith(("http://", "https://")), name
        algorithm, digest = parse_checksum(cfg.data.download.checksum)
        assert len(digest) == {"sha256": 64, "md5": 32}[algorithm], name


# --- transfers that go wrong: a scripted server on 127.0.0.1 -------------------------------------

class _Scripted(BaseHTTPRequestHandler):
    """Answers GET `path` with `server.routes[path](handler)`, counting requests in `server.requests`."""

    def do_GET(self):
        self.server.requests.append(self.path)
        self.server.routes[self.path](self)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    """(server, base URL): set `server.routes[path] = answer`; `server.release` ends stalled answers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.routes, server.requests, server.release = {}, [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _answer(body: bytes, announced: int | None = None, stall: bool = False, before_headers: bool = False):
    """An answer sending `body` with `Content-Length: announced` (default: its length), then closing
    the connection (a cut transfer when `announced` is larger), or waiting for the release (stalled)."""
    def answer(handler):
        if before_headers:
            handler.server.release.wait(10)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body) if announced is None else announced))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
        if stall:
            handler.server.release.wait(10)
        handler.close_connection = True
    return answer


def _cfg(url: str, **download):
    return parse_data({"name": "fsdd", "root": None,
                             "download": {"url": f"{url}/v1.0.9.tar.gz", "checksum": None, **download}})


def test_a_cut_transfer_keeps_nothing_and_a_rerun_downloads_again(scripted, tmp_path):
    """The issue's case: checksum=null, the server announces more bytes than it sends and closes."""
    server, url = scripted
    body = _fsdd_tar(tmp_path / "v1.0.9.tar.gz").read_bytes()
    server.routes["/v1.0.9.tar.gz"] = _answer(body[:300], announced=len(body))
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError) as error:
        dataset_root(_cfg(url), raw, progress=False)
    assert f"received 300 of {len(body)} bytes (the transfer was cut)" in str(error.value)
    assert _files(raw) == [] and not (raw / "fsdd").exists()  # no .part, nothing under the final name

    server.routes["/v1.0.9.tar.gz"] = _answer(body)  # the rerun asks the server again, and succeeds
    assert len(list((dataset_root(_cfg(url), raw, progress=False) / "recordings").iterdir())) == 6
    assert server.requests == ["/v1.0.9.tar.gz"] * 2


def test_a_cut_chunked_transfer_without_a_content_length_is_cut_too(scripted, tmp_path):
    server, url = scripted

    def chunked_then_cut(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"64\r\n" + b"x" * 100 + b"\r\n" + b"64\r\n" + b"x" * 30)  # 2nd chunk: 30 of 100
        handler.close_connection = True

    server.routes["/v1.0.9.tar.gz"] = chunked_then_cut
    with pytest.raises(DownloadError, match=r"received 130 bytes, then the transfer was cut \(a chunk was incomplete"):
        dataset_root(_cfg(url), tmp_path / "raw", progress=False)
    assert _files(tmp_path / "raw") == []


def test_a_cut_transfer_with_a_checksum_blames_the_transfer_not_the_config(scripted, tmp_path):
    server, url = scripted
    archive = _fsdd_tar(tmp_path / "v1.0.9.tar.gz")
    body = archive.read_bytes()
    server.routes["/v1.0.9.tar.gz"] = _answer(body[:-100], announced=len(body))
    with pytest.raises(DownloadError) as error:
        dataset_root(_cfg(url, checksum=f"sha256:{_sha256(archive)}"), tmp_path / "raw", progress=False)
    assert "the transfer was cut" in str(error.value) and "checksum" not in str(error.value)
    assert _files(tmp_path / "raw") == []


@pytest.mark.parametrize("left", ["v1.0.9.tar.gz", archive_name("http://elsewhere/v1.0.9.tar.gz", "")],
                         ids=["a cut transfer an older version renamed", "another URL's archive"])
def test_an_archive_left_by_an_earlier_run_is_not_trusted(left, scripted, tmp_path):
    """Only pooch's rename of a whole transfer of this URL makes the name `dataset_root` reads."""
    server, url = scripted
    body = _fsdd_tar(tmp_path / "v1.0.9.tar.gz").read_bytes()
    server.routes["/v1.0.9.tar.gz"] = _answer(body)
    downloads = tmp_path / "raw" / ".downloads" / "fsdd"
    downloads.mkdir(parents=True)
    (downloads / left).write_bytes(body[:300])
    root = dataset_root(_cfg(url), tmp_path / "raw", progress=False)
    assert len(list((root / "recordings").iterdir())) == 6
    assert server.requests == ["/v1.0.9.tar.gz"]
    assert not downloads.exists()


@pytest.mark.parametrize("before_headers", [False, True], ids=["after some bytes", "before the headers"])
def test_a_stalled_transfer_fails_after_timeout_s_and_keeps_nothing(before_headers, scripted, tmp_path):
    """The count is of the bytes written: pooch reads CHUNK bytes at a time, the last 100 never complete one."""
    server, url = scripted
    server.routes["/v1.0.9.tar.gz"] = _answer(b"x" * (CHUNK + 100), announced=4 * CHUNK, stall=True,
                                              before_headers=before_headers)
    with pytest.raises(DownloadError) as error:  # "stalled": the timeout fired (the server holds on for 10 s)
        dataset_root(_cfg(url, timeout_s=1), tmp_path / "raw", progress=False)
    received = "0 of an unknown number of" if before_headers else f"{CHUNK} of {4 * CHUNK}"
    assert f"stalled: no data for data.download.timeout_s=1 s after {received} bytes" in str(error.value)
    assert _files(tmp_path / "raw") == []


def test_a_zip_bomb_stops_naming_the_setting_and_is_kept_for_a_rerun_with_a_higher_limit(scripted, tmp_path):
    server, url = scripted
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("fsdd/zeros.bin", bytes(5 * 2**20))
    server.routes["/v1.0.9.tar.gz"] = _answer(buffer.getvalue())
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match="more than data.download.max_bytes=1048576; nothing was extracted"):
        dataset_root(_cfg(url, max_bytes=2**20, max_ratio=None), raw, progress=False)
    assert not (raw / "fsdd").exists() and not list(raw.glob(".fsdd-extract-*"))
    assert _files(raw) == [f".downloads/fsdd/{archive_name(f'{url}/v1.0.9.tar.gz', '')}"]  # whole: kept
    root = dataset_root(_cfg(url, max_bytes=None, max_ratio=None), raw, progress=False)
    assert (root / "zeros.bin").stat().st_size == 5 * 2**20
    assert server.requests == ["/v1.0.9.tar.gz"]  # the rerun did not download it again


def test_a_hostile_archive_is_deleted_so_a_rerun_downloads_again(scripted, tmp_path):
    server, url = scripted
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        link = tarfile.TarInfo("x")
        link.type, link.linkname = tarfile.SYMTYPE, "."
        bundle.addfile(link)
    server.routes["/v1.0.9.tar.gz"] = _answer(buffer.getvalue())
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match="refused member 'x': a symbolic link"):
        dataset_root(_cfg(url), raw, progress=False)
    assert _files(raw) == [] and [p for p in raw.rglob("*") if p.is_symlink()] == []


def test_scratch_and_temporary_files_of_a_killed_run_are_removed(served, tmp_path):
    www, url = served
    _fsdd_tar(www / "v1.0.9.tar.gz")
    raw = tmp_path / "raw"
    stale = raw / ".fsdd-extract-k1lled"  # what a killed extraction leaves (mkdtemp's name)
    (stale / "free-spoken-digit-dataset-1.0.9" / "recordings").mkdir(parents=True)
    (stale / "free-spoken-digit-dataset-1.0.9" / "recordings" / "0_ann_0.wav").write_bytes(b"half")
    (raw / ".downloads" / "fsdd").mkdir(parents=True)
    (raw / ".downloads" / "fsdd" / "tmpk1lled").write_bytes(b"half")  # pooch's temporary file (mkstemp's name)
    other = raw / ".esc50-extract-abc"  # another dataset's: not this fetch's business
    other.mkdir()
    dataset_root(_cfg(url), raw, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == [".downloads", ".esc50-extract-abc", ".fsdd.lock", "fsdd"]
    assert list((raw / ".downloads").iterdir()) == []
    assert (raw / "fsdd" / "recordings" / "0_ann_0.wav").read_bytes() != b"half"


def test_a_fetch_in_progress_elsewhere_is_waited_for_and_its_scratch_left_alone(served, tmp_path):
    """Another process holds the lock of `raw/fsdd` (it is extracting): its scratch folder is not a leftover."""
    from audiocnn.atomic import folder_lock
    from audiocnn.errors import LockedError

    www, url = served
    _fsdd_tar(www / "v1.0.9.tar.gz")
    raw = tmp_path / "raw"
    live = raw / ".fsdd-extract-live"
    live.mkdir(parents=True)
    held, done = threading.Event(), threading.Event()

    def other_process():  # a second file descriptor on the lock file: flock makes it another holder
        with folder_lock(raw / "fsdd", 1, "lock_timeout_s", "download"):
            held.set()
            done.wait(10)

    holder = threading.Thread(target=other_process)
    holder.start()
    try:
        assert held.wait(5)
        with pytest.raises(LockedError, match="after lock_timeout_s=0.5 s"):
            dataset_root(_cfg(url), raw, progress=False, lock_timeout_s=0.5)
        assert live.is_dir() and not (raw / "fsdd").exists()
    finally:
        done.set()
        holder.join(5)


@pytest.mark.slow  # 10-20 s: make test-slow and CI run it (#24: make test at most 12 min)
def test_the_prepare_entry_point_reports_a_cut_download_in_one_error_line(scripted, tmp_path):
    """`python pipelines/prepare.py --params FILE` (as dvc.yaml runs it): exit 1, one `error:` line, no traceback."""
    import os
    import subprocess
    import sys

    from audiocnn.config import write_params
    from tests.conftest import REPO

    server, url = scripted
    body = _fsdd_tar(tmp_path / "v1.0.9.tar.gz").read_bytes()
    server.routes["/v1.0.9.tar.gz"] = _answer(body[:300], announced=len(body))
    paths = [f"paths.{key}={tmp_path / 'data' / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    params = write_params(tmp_path / "params.yaml", ["data=fsdd", f"data.download.url={url}/v1.0.9.tar.gz",
                                                     "data.download.checksum=null", *paths,
                                                     f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    result = subprocess.run([sys.executable, "pipelines/prepare.py", "--params", str(params)], cwd=REPO,
                            capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: download of {url}/v1.0.9.tar.gz failed: received 300 of {len(body)} bytes (the "
                      f"transfer was cut); nothing was kept, run again to retry"], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert _files(tmp_path / "data" / "raw") == []


def test_prepare_waits_for_another_fetch_of_the_dataset_up_to_lock_timeout_s(served, tmp_path):
    from audiocnn.atomic import folder_lock
    from audiocnn.data.prepare import prepare
    from audiocnn.errors import LockedError
    from audiocnn.config import compose_config

    www, url = served
    _fsdd_tar(www / "v1.0.9.tar.gz")
    cfg = compose_config(["data=fsdd", f"data.download.url={url}/v1.0.9.tar.gz", "data.download.checksum=null",
                          "lock_timeout_s=0.5", f"paths.raw={tmp_path / 'raw'}", f"paths.prepared={tmp_path / 'p'}"])
    held, done = threading.Event(), threading.Event()

    def other_process():  # holds the lock 3 s: longer than lock_timeout_s, far shorter than the default
        with folder_lock(tmp_path / "raw" / "fsdd", 1, "lock_timeout_s", "download"):
            held.set()
            done.wait(3)

    holder = threading.Thread(target=other_process)
    holder.start()
    try:
        assert held.wait(5)
        with pytest.raises(LockedError, match=r"raw/fsdd: still being written by .* after lock_timeout_s=0.5 s"):
            prepare(prepare_settings(cfg))
    finally:
        done.set()
        holder.join(5)
