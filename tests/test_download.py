"""Download path: a tiny dataset archive served over HTTP on 127.0.0.1, checksums, atomic extraction."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from audiocnn.data.download import DownloadError, dataset_root, extract, fetch, parse_checksum


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


def test_dataset_root_downloads_verifies_and_extracts_into_raw(served, tmp_path):
    www, url = served
    archive = _fsdd_tar(www / "v1.0.9.tar.gz")
    cfg = OmegaConf.create({"name": "fsdd", "root": None,
                            "download": {"url": f"{url}/v1.0.9.tar.gz", "checksum": f"sha256:{_sha256(archive)}"}})
    raw = tmp_path / "raw"
    root = dataset_root(cfg, raw, progress=False)

    assert root == raw / "fsdd"
    assert sorted(p.name for p in (root / "recordings").iterdir()) == sorted(
        f"{d}_ann_{i}.wav" for d in range(2) for i in (0, 7, 12))
    # The single top folder of the archive was unwrapped; no archive, partial file or scratch folder remains.
    assert sorted(p.name for p in raw.iterdir()) == [".downloads", "fsdd"]
    assert list((raw / ".downloads").iterdir()) == []
    # A second call reuses the folder without touching the network.
    archive.unlink()
    assert dataset_root(cfg, raw, progress=False) == root


def test_a_wrong_checksum_names_the_url_and_both_checksums_and_leaves_nothing(served, tmp_path):
    www, url = served
    archive = _fsdd_tar(www / "v1.0.9.tar.gz")
    wrong = "0" * 64
    cfg = OmegaConf.create({"name": "fsdd", "root": None,
                            "download": {"url": f"{url}/v1.0.9.tar.gz", "checksum": f"sha256:{wrong}"}})
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError) as error:
        dataset_root(cfg, raw, progress=False)
    message = str(error.value)
    assert f"{url}/v1.0.9.tar.gz" in message and wrong in message and _sha256(archive) in message
    assert not (raw / "fsdd").exists()
    assert [p for p in raw.rglob("*") if p.is_file()] == []  # the bad download was deleted


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
    with pytest.raises(Exception):
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
