"""Failures that were tracebacks are one `error:` line with exit 2, found before anything is made;
a file or folder that cannot be read is a skipped entry with its reason (#23, item 10).

Each test builds the bad input for real: a WAV without a data chunk, a kernel ENOSPC from
`/dev/full`, a tracking URI naming `/etc`, an MLflow run id no store holds, dangling symbolic
links, a symbolic-link loop, a path longer than the system allows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiocnn.settings import store_settings
from audiocnn.cli import main
from tests.conftest import REPO, TINY, untrained_bundle

FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


def _error_line(capsys) -> str:
    """The one line a command wrote to stderr besides its progress bar: exactly one, an `error:` line."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if line.strip() and not re.match(r"^[\w ()]+: +\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _corrupt_wavs(folder: Path) -> list[Path]:
    """A RIFF/WAVE header without a data chunk, and text named `.wav`."""
    folder.mkdir(parents=True, exist_ok=True)
    no_data = folder / "no_data.wav"
    no_data.write_bytes(b"RIFF\x1c\x00\x00\x00WAVEjunk\x04\x00\x00\x00junk")
    text = folder / "text.wav"
    text.write_text("not audio\n")
    return [no_data, text]


def test_explain_on_a_corrupt_wav_is_one_line_and_writes_nothing(tmp_path, capsys):
    model = untrained_bundle(tmp_path / "model")
    for audio, reason in zip(_corrupt_wavs(tmp_path / "audio"), ["No 'data' chunk", "Format not recognised"]):
        before = sorted(tmp_path.rglob("*"))
        assert main(["explain", str(audio), "--model", str(model.parent)]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: {audio}: unreadable audio (") and reason in line, line
        assert sorted(tmp_path.rglob("*")) == before  # no PNG, no store


@pytest.mark.parametrize("command", ["predict", "explain"])
@pytest.mark.parametrize("source", [f"runs:/{UNKNOWN_RUN}/model", UNKNOWN_RUN, "models:/nope/1"])
def test_an_mlflow_source_no_store_holds_is_one_line_and_creates_no_store(tmp_path, monkeypatch, capsys, command,
                                                                          source):
    """Without a tracking URI the source is looked up in ./mlflow.db: it does not exist, so it holds no run,
    and it is not created (it was, with a 57-line traceback)."""
    audio = tmp_path / "clip.wav"
    shutil.copy(FSDD / "0_george_0.wav", audio)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([command, str(audio), "--model", source]) == 2
    line = _error_line(capsys)
    assert "no such model: the MLflow store mlflow.db does not exist" in line and "--tracking-uri" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav"]


def test_an_unknown_run_or_model_in_an_existing_store_is_one_line(tmp_path, capsys):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(store).search_experiments()  # the store exists, with no run and no registered model
    capsys.readouterr()
    audio = tmp_path / "clip.wav"
    shutil.copy(FSDD / "0_george_0.wav", audio)
    for source, reason in [(f"runs:/{UNKNOWN_RUN}/model", f"Run with id={UNKNOWN_RUN} not found"),
                           ("models:/nope/1", "Registered Model with name=nope not found")]:
        for command in ("predict", "explain"):
            assert main([command, str(audio), "--model", source, "--tracking-uri", store]) == 2
            line = _error_line(capsys)
            assert line.startswith(f"error: {source}: {reason}") and line.endswith(f"(MLflow store {store})"), line


def test_a_tracking_uri_naming_etc_is_refused_before_any_folder_or_store(tmp_path, monkeypatch):
    """`tracking.uri=file:///etc` failed after the run folders were made (49 lines); now one line from a
    clean working directory, which stays empty. Where MLflow would open a folder store
    (`MLFLOW_ALLOW_FILE_STORE=true`), /etc is refused as a folder of other files; that is asked of the check
    alone, so that a regression cannot let MLflow write into /etc."""
    from audiocnn.validation.tracking_uri import store_problem

    paths = [f"paths.{key}={tmp_path / 'data' / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    work = tmp_path / "work"
    work.mkdir()
    environment = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI")}
    result = subprocess.run([sys.executable, "-m", "audiocnn.cli", "train", *TINY, *paths, "tracking.uri=file:///etc"],
                            cwd=work, capture_output=True, text=True, timeout=300,
                            env={**environment, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: tracking.uri=file:///etc: a folder store, which MLflow 3 no longer opens (its file store is in "
        "maintenance mode); use a SQLite file (sqlite:///mlflow.db) or an http(s):// server"]
    assert list(work.iterdir()) == [] and sorted(tmp_path.iterdir()) == [work]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    others = sorted(n for n in os.listdir("/etc") if not n.isdigit() and n not in (".trash", "models"))
    assert store_problem("file:///etc") == (f"/etc holds files that are not an MLflow store's ({', '.join(others[:3])}"
                                            f"{', ...' if len(others) > 3 else ''}); give a new or empty folder")


@pytest.mark.parametrize("uri, allow, message", [
    ("file:///etc", None, "a folder store, which MLflow 3 no longer opens"),
    ("{tmp}/runs", None, "a folder store, which MLflow 3 no longer opens"),
    ("file://{tmp}/notes.txt", "true", "{tmp}/notes.txt is a file, not a folder"),
    ("sqlite:///{tmp}/notes.txt", None, "{tmp}/notes.txt is not a SQLite database (it holds other data)"),
    ("sqlite:///{tmp}/notes.txt/mlflow.db", None, "{tmp}/notes.txt is a file, so the database"),
    ("sqlite:///{tmp}", None, "{tmp} is a folder, not a SQLite database file"),
    ("htp://localhost:5000", None, "not a tracking store MLflow opens; allowed: sqlite:///<file>"),
])
def test_a_tracking_store_mlflow_cannot_open_is_one_line_naming_tracking_uri(tmp_path, monkeypatch, capsys, uri,
                                                                             allow, message):
    (tmp_path / "notes.txt").write_text("not a database\n")
    uri, message = uri.format(tmp=tmp_path), message.format(tmp=tmp_path)
    # the user's MLFLOW_TRACKING_URI wins over tracking.uri; an earlier test's mlflow.set_tracking_uri
    # exported one in this process (MLflow's doing), so this test starts without it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if allow:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allow)
    if not allow:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    before = sorted(tmp_path.rglob("*"))
    paths = [f"paths.{key}={tmp_path / 'data' / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    assert main(["train", *TINY, *paths, f"tracking.uri={uri}"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: tracking.uri={uri}: {message}"), line
    assert sorted(tmp_path.rglob("*")) == before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the environment overrides tracking.uri: checked too
    assert main(["show-config", f"tracking.uri=sqlite:///{tmp_path / 'ok.db'}"]) == 2
    assert _error_line(capsys).startswith(f"error: MLFLOW_TRACKING_URI={uri}: {message}")


def test_good_tracking_stores_pass(tmp_path, capsys):
    """A new SQLite file (in folders still to be made), an existing store, a server: accepted."""
    from audiocnn.validation.tracking_uri import store_problem

    import mlflow

    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'old.db'}").search_experiments()
    for uri in [f"sqlite:///{tmp_path / 'new' / 'deeper' / 'mlflow.db'}", f"sqlite:///{tmp_path / 'old.db'}",
                "sqlite:///mlflow.db", "http://localhost:5000", "https://user:pw@mlflow.example.org",
                "postgresql+psycopg2://u@db/mlflow", "databricks"]:
        assert store_problem(uri) is None, uri
    assert not (tmp_path / "new").exists()


def _full_disk_store(tmp_path, prepared_store):
    """A copy of the tiny prepared set, and its store folder in which the second shard's temporary file
    is `/dev/full`: writing it fails with the kernel's own ENOSPC, after the first shard is finished."""
    from audiocnn.features.featurize import store_dir
    from tests.conftest import tiny_config

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    shutil.copytree(prepared_store.paths.prepared, tmp_path / "prepared")
    overrides = ["features.shard_mb=0.05", "features.device=cpu"]
    cfg = tiny_config(tmp_path, *overrides)
    root = store_dir(store_settings(cfg))
    root.mkdir(parents=True)
    (root / f".shard-00001.f16.tmp-{os.getpid()}").symlink_to("/dev/full")
    paths = [f"paths.{key}={tmp_path / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    return cfg, root, [*TINY, *paths, f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides]


def test_featurize_on_a_full_disk_is_one_line_keeps_finished_shards_and_resumes(tmp_path, prepared_store, capsys):
    from tests.test_store_integrity import _frames_by_path, _stamps

    from audiocnn.features.featurize import store_dir

    cfg, root, overrides = _full_disk_store(tmp_path, prepared_store)
    assert main(["featurize", *overrides]) == 2
    line = _error_line(capsys)
    assert line == (f"error: paths.features={tmp_path / 'features'}: No space left on device while writing {root}; "
                    "free space and run featurize again (it goes on after the shards it finished), or set "
                    "paths.features to a disk with room")
    # nothing half-written under any name: the first shard whole, no temporary file, no second shard, no index
    assert sorted(p.name for p in root.iterdir()) == ["shard-00000.csv", "shard-00000.f16", "shard-00000.json",
                                                       "store.json"]
    assert json.loads((root / "store.json").read_text())["complete"] is False
    assert os.path.exists("/dev/full")
    finished = _stamps(root)

    capsys.readouterr()
    assert main(["featurize", *overrides]) == 0  # the disk has room again: it goes on after shard 0
    assert "keeping 1 shards" in capsys.readouterr().out
    assert _stamps(root)["shard-00000.f16"] == finished["shard-00000.f16"]
    resumed, whole = _frames_by_path(root), _frames_by_path(store_dir(store_settings(prepared_store)))
    assert resumed.keys() == whole.keys()
    assert all(np.array_equal(resumed[path], whole[path]) for path in whole)


def _long_path_file(folder: Path, audio: Path) -> Path:
    """A WAV whose path is longer than PATH_MAX (4096 bytes): each folder is made relative to the one before."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=descriptor)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
        with open(os.open("deep.wav", os.O_WRONLY | os.O_CREAT, dir_fd=descriptor), "wb") as handle:
            handle.write(audio.read_bytes())
    finally:
        os.close(descriptor)
    return folder.joinpath(*["d" * 250] * 20, "deep.wav")


def _folder_dataset(root: Path) -> dict[str, str]:
    """Two classes of real recordings plus entries that cannot be read; {path: reason prepare must give}."""
    for label, digit in (("zero", 0), ("one", 1)):
        (root / label).mkdir(parents=True)
        for index in range(6):
            shutil.copy(FSDD / f"{digit}_george_{index}.wav", root / label / f"{digit}_george_{index}.wav")
    (root / "zero" / "dangling.wav").symlink_to(root / "zero" / "nowhere.wav")
    (root / "zero" / "loop_a.wav").symlink_to(root / "zero" / "loop_b.wav")
    (root / "zero" / "loop_b.wav").symlink_to(root / "zero" / "loop_a.wav")
    (root / "one" / "folders").mkdir()
    deep = _long_path_file(root / "one" / "folders", FSDD / "1_george_9.wav")
    expected = {str(root / "zero" / "dangling.wav"): "unreadable: dangling symbolic link",
                str(root / "zero" / "loop_a.wav"): "unreadable: Too many levels of symbolic links",
                str(root / "zero" / "loop_b.wav"): "unreadable: Too many levels of symbolic links"}
    # the first folder whose path passes PATH_MAX (4096 bytes with its final NUL) cannot be listed: it is
    # the entry, with the system's reason
    too_long = deep.parent
    while len(str(too_long.parent)) >= 4096:
        too_long = too_long.parent
    expected[str(too_long)] = "unreadable folder: File name too long"
    if os.geteuid() != 0:  # root reads a mode-000 folder anyway
        (root / "one" / "locked").mkdir()
        shutil.copy(FSDD / "1_george_8.wav", root / "one" / "locked" / "x.wav")
        (root / "one" / "locked").chmod(0)
        expected[str(root / "one" / "locked")] = "unreadable folder: Permission denied"
    return expected


def test_entries_that_cannot_be_read_are_skipped_with_their_reason_and_the_run_goes_on(tmp_path, capsys):
    root = tmp_path / "recordings"
    expected = _folder_dataset(root)
    prepared = tmp_path / "prepared"
    try:
        code = main(["prepare", "data=folder", f"data.root={root}", "data.val_fraction=0.2", "data.test_fraction=0.2",
                     f"paths.prepared={prepared}", f"paths.raw={tmp_path / 'raw'}"])
    finally:
        if (root / "one" / "locked").exists():
            (root / "one" / "locked").chmod(0o755)
    assert code == 0, capsys.readouterr().err
    report = json.loads((prepared / "report.json").read_text())
    assert report["kept"] == 12
    assert {s["path"]: s["reason"] for s in report["skipped_files"]} == expected
    assert f"skipped {len(expected)}" in capsys.readouterr().out


def test_a_data_root_that_is_no_dataset_folder_is_one_line_naming_data_root(tmp_path, capsys):
    """`data.root=/` walked the whole filesystem, to a PermissionError traceback; a file as data.root was a
    NotADirectoryError, a folder without class folders a FileNotFoundError."""
    (tmp_path / "file").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    paths = [f"paths.prepared={tmp_path / 'p'}", f"paths.raw={tmp_path / 'raw'}"]
    for root, reason in [("/", "the root of the filesystem; point it at your copy of folder"),
                         (tmp_path / "file", "not a folder; point it at your copy of folder")]:
        assert main(["prepare", "data=folder", f"data.root={root}", *paths]) == 2
        assert _error_line(capsys) == f"error: data.root={root}: {reason}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]  # refused before anything is made
    assert main(["prepare", "data=folder", f"data.root={tmp_path / 'empty'}", *paths]) == 2
    assert _error_line(capsys) == f"error: data.root={tmp_path / 'empty'}: no class sub-folders in it"
