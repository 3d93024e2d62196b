"""Concurrent writers cannot corrupt a folder: featurize and prepare take a writer lock.

Two real `pipelines/featurize.py` processes featurize different clips (two manifests) into
one `paths.features`. The store folder is named after the feature parameters only, so
both want the same folder: the second waits for the first, then finds the store holds the
other manifest's clips and rebuilds it for its own (the last writer wins; the first's
train stage would be told its store holds other clips). Either way the store is never a
mix, every shard matches its checksum, and nobody crashes on a shared temporary name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings, store_settings
from audiocnn import atomic
from audiocnn.config import compose_config, write_params
from audiocnn.errors import LockedError
from audiocnn.features.featurize import featurize, is_featurized, store_dir
from audiocnn.features.store import FeatureStore, check_shards, finished_shards
from tests.conftest import REPO, tiny_config

SR = 8000
WRITERS = ("a", "b")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """60 short WAV files; manifests prepared_a (the first 40) and prepared_b (the last 20)."""
    root = tmp_path_factory.mktemp("clips")
    (root / "wav").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        t = np.arange(int(rng.uniform(0.5, 1.0) * SR)) / SR
        path = root / "wav" / f"clip{i:03d}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t)).astype(np.float32), SR)
        rows.append({"path": str(path), "label": str(i % 3), "split": ["train", "val", "test"][i % 3],
                     "fold": "", "group": str(i), "duration": len(t) / SR, "sr": SR})
    for name, part in (("a", rows[:40]), ("b", rows[40:])):
        (root / f"prepared_{name}").mkdir()
        pd.DataFrame(part).to_csv(root / f"prepared_{name}" / "manifest.csv", index=False)
        (root / f"prepared_{name}" / "classes.json").write_text(json.dumps(["0", "1", "2"]))
    return root


def overrides(clips: Path, features: Path, name: str, *extra: str) -> list[str]:
    # one clip per shard and per CQT batch: many shards, so a writer is seen mid-write
    return ["data=fsdd", f"data.root={clips}", f"paths.prepared={clips / f'prepared_{name}'}",
            f"paths.features={features}", "features.device=cpu", "features.num_workers=0",
            "features.shard_mb=0.005", "features.batch_size=1", *extra]


class Writer:
    """`python pipelines/featurize.py --params <params>` in its own process, its output collected as it comes."""

    def __init__(self, params: Path):
        self.process = subprocess.Popen([sys.executable, "-u", "pipelines/featurize.py", "--params", str(params)],
                                        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=lambda s=s, d=d: d.extend(s), daemon=True)
                        for s, d in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    def wait(self, timeout: float = 240) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()


def _until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _assert_store_is_exactly(root: Path, clips: Path, name: str) -> None:
    """The store is complete, holds manifest `name`'s clips and nothing else, and every shard verifies."""
    meta = json.loads((root / "store.json").read_text())
    assert meta["complete"] and meta["prepared"] == str(clips / f"prepared_{name}")
    manifest = pd.read_csv(clips / f"prepared_{name}" / "manifest.csv")
    assert FeatureStore(root).index["path"].tolist() == manifest["path"].tolist()
    records = finished_shards(root)
    assert set(records) == set(meta["shard_files"]) and check_shards(root, records, checksum=True) == {}
    assert {p.stem for p in root.glob("shard-*")} == set(records)  # no stray shard of the other writer
    assert not list(root.glob(".*tmp*"))
    assert not atomic.lock_paths(root)[1].exists()  # the owner file goes with the lock


@pytest.mark.slow  # 10-20 s: make test-slow and CI run it (#24: make test at most 12 min)
def test_two_featurize_processes_started_together_leave_one_consistent_store(clips, tmp_path):
    features = tmp_path / "features"
    configs = {n: compose_config(overrides(clips, features, n)) for n in WRITERS}
    writers = {n: Writer(write_params(tmp_path / f"params_{n}.yaml", overrides(clips, features, n))) for n in WRITERS}
    try:
        codes = {n: w.wait() for n, w in writers.items()}
    finally:
        for w in writers.values():
            w.stop()
    assert codes == {"a": 0, "b": 0}, {n: w.err[-5:] for n, w in writers.items()}
    # the writer that got the lock second found the other's finished store and rebuilt it for itself
    rebuilt = [n for n, w in writers.items() if "holds the clips of another manifest" in w.stdout]
    assert len(rebuilt) == 1, {n: w.stdout for n, w in writers.items()}
    last = rebuilt[0]
    first = next(n for n in WRITERS if n != last)
    assert f"paths.prepared={clips / f'prepared_{first}'}); rebuilding it" in writers[last].stdout
    root = store_dir(store_settings(configs[last]))
    _assert_store_is_exactly(root, clips, last)
    assert is_featurized(store_settings(configs[last])) and not is_featurized(store_settings(configs[first]))


@pytest.mark.slow  # 10-20 s: make test-slow and CI run it (#24: make test at most 12 min)
def test_a_featurize_started_while_another_writes_waits_then_rebuilds_and_a_short_timeout_names_the_holder(
        clips, tmp_path):
    features = tmp_path / "features"
    params = {n: write_params(tmp_path / f"params_{n}.yaml", overrides(clips, features, n)) for n in WRITERS}
    impatient = write_params(tmp_path / "params_c.yaml", overrides(clips, features, "b", "lock_timeout_s=1"))
    root = store_dir(store_settings(compose_config(overrides(clips, features, "a"))))
    a = Writer(params["a"])
    waiting, gave_up = None, None
    try:
        _until(lambda: finished_shards(root) or a.process.poll() is not None, "a's first shard")
        a.process.send_signal(signal.SIGSTOP)  # a holds the lock, its store half written
        assert a.process.poll() is None, "a finished before it could be caught mid-write"
        assert not json.loads((root / "store.json").read_text())["complete"]
        waiting, gave_up = Writer(params["b"]), Writer(impatient)  # seconds later: two more writers
        _until(lambda: "waiting up to lock_timeout_s" in waiting.stdout, "b's waiting message")
        assert gave_up.wait() == 1
        a.process.send_signal(signal.SIGCONT)
        assert a.wait() == 0 and waiting.wait() == 0, (a.err[-5:], waiting.err[-5:])
    finally:
        for w in (a, waiting, gave_up):
            if w is not None:
                w.stop()
    holder = f"pid {a.process.pid} on {socket.gethostname()} since "
    assert holder in waiting.stdout
    error = [line for line in gave_up.err if line.startswith("error:")]
    assert len(error) == 1 and holder in error[0] and "after lock_timeout_s=1 s" in error[0], gave_up.err[-5:]
    assert "wrote 40 clips" in a.stdout  # a finished its own store, untouched while it wrote ...
    assert (f"holds the clips of another manifest (paths.prepared={clips / 'prepared_a'}); rebuilding it"
            in waiting.stdout)  # ... which b found complete, and replaced with its own
    assert "wrote 20 clips" in waiting.stdout
    _assert_store_is_exactly(root, clips, "b")


def test_a_held_lock_makes_featurize_and_prepare_wait_then_fail_naming_the_holder(clips, tmp_path, capsys):
    cfg = compose_config(overrides(clips, tmp_path / "features", "a", "lock_timeout_s=0.3"))
    holder = f"pid {os.getpid()} on {socket.gethostname()} since "
    with atomic.folder_lock(store_dir(store_settings(cfg)), 1, "lock_timeout_s", "test"):
        with pytest.raises(LockedError, match=r"still being written by pid .* after lock_timeout_s=0.3 s") as error:
            featurize(store_settings(cfg))
    assert holder in str(error.value) and "\n" not in str(error.value)
    assert f"featurize: waiting up to lock_timeout_s=0.3 s for {store_dir(store_settings(cfg))}, which {holder}" in capsys.readouterr().out
    assert featurize(store_settings(cfg)) == store_dir(store_settings(cfg))  # released: the next writer goes straight in

    from audiocnn.data.prepare import prepare

    tiny = tiny_config(tmp_path, "lock_timeout_s=0.2")
    with atomic.folder_lock(tiny.paths.prepared, 1, "lock_timeout_s", "test"):
        with pytest.raises(LockedError, match=rf"{tiny.paths.prepared}: still being written by pid {os.getpid()}"):
            prepare(prepare_settings(tiny))
    assert not Path(tiny.paths.prepared, "manifest.csv").exists()
