"""The feature store at scale: SIGKILL + restart, torchrun ranks, chunked long clips, re-splits.

Each test featurizes small generated WAV files through the real stage (in a subprocess
where the point is a real process: killed, or launched by torchrun).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from audiocnn.settings import store_settings
from audiocnn.config import compose_config, write_params
from audiocnn.features.featurize import featurize, is_featurized, store_dir
from audiocnn.features.store import FeatureStore, finished_shards

REPO = Path(__file__).resolve().parent.parent


def make_clips(root: Path, n: int, seconds: tuple[float, float] = (0.5, 1.5), sr: int = 8000) -> None:
    """`n` noisy chirps as WAV files at `sr` (to be resampled to 16 kHz) plus manifest.csv and classes.json."""
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        duration = rng.uniform(*seconds)
        t = np.arange(int(duration * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * (100 + 200 * i % 1500) * t * (1 + t)) + 0.05 * rng.standard_normal(len(t))
        path = root / "wav" / f"clip{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), sr)
        rows.append({"path": str(path), "label": str(i % 3), "split": ["train", "val", "test"][i % 3],
                     "fold": str(i % 4), "group": str(i), "duration": len(t) / sr, "sr": sr})
    (root / "prepared").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "prepared" / "manifest.csv", index=False)
    (root / "prepared" / "classes.json").write_text(json.dumps(["0", "1", "2"]))


def config(root: Path, *overrides: str):
    return compose_config(["data=fsdd", f"data.root={root}", f"paths.prepared={root / 'prepared'}",
                           f"paths.features={root / 'features'}", "features.device=cpu", "features.num_workers=0",
                           *overrides])


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    make_clips(root, 120)
    return root


@pytest.mark.slow
def test_a_sigkilled_featurize_restarts_and_gives_the_uninterrupted_store(clips, tmp_path):
    shard = ["features.shard_mb=0.02", "features.batch_size=4"]  # ~2 clips per shard, ~60 shards
    reference = featurize(store_settings(config(clips, *shard)))

    killed = tmp_path / "killed"
    params = write_params(tmp_path / "params.yaml", ["data=fsdd", f"data.root={clips}",
                                                     f"paths.prepared={clips / 'prepared'}",
                                                     f"paths.features={killed}", "features.device=cpu",
                                                     "features.num_workers=0", *shard])
    command = [sys.executable, "pipelines/featurize.py", "--params", str(params)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = killed / reference.name
    deadline = time.monotonic() + 120
    while len(list(root.glob("shard-*.csv"))) < 3:
        assert process.poll() is None, "featurize finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not json.loads((root / "store.json").read_text())["complete"]
    # finished: frames, csv and record all written (a shard killed between its rename and its record
    # is not, and is written again: the store's contract, `store.finished_shards`)
    finished = {f"{name}.f16": ((root / f"{name}.f16").stat().st_ino, (root / f"{name}.f16").stat().st_mtime_ns)
                for name in finished_shards(root)}
    assert finished and not (root / "index.csv").exists()

    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    assert snapshot(root) == snapshot(reference)  # every shard, index.csv and store.json, byte for byte
    assert {n: ((root / n).stat().st_ino, (root / n).stat().st_mtime_ns) for n in finished} == finished  # reused


@pytest.mark.slow
def test_torchrun_with_two_ranks_gives_the_single_process_store(clips, tmp_path):
    single = FeatureStore(featurize(store_settings(config(clips, "features.shard_mb=0.05"))))
    params = write_params(tmp_path / "params.yaml", ["data=fsdd", f"data.root={clips}",
                                                     f"paths.prepared={clips / 'prepared'}",
                                                     f"paths.features={tmp_path / 'features'}", "features.device=cpu",
                                                     "features.num_workers=0", "features.shard_mb=0.05"])
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "pipelines/featurize.py",
                    "--params", str(params)], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    both = FeatureStore(tmp_path / "features" / single.root.name)
    names = {p.name for p in both.root.glob("*.f16")}
    assert any(n.startswith("shard-r0of2-") for n in names) and any(n.startswith("shard-r1of2-") for n in names)
    assert both.index[["clip_id", "path", "label", "length"]].equals(single.index[["clip_id", "path", "label", "length"]])
    for row in range(len(single)):
        np.testing.assert_array_equal(both.frames(row), single.frames(row))
    assert both.meta["complete"] and both.meta["clips"] == single.meta["clips"]


def test_long_clips_are_chunked_with_the_same_frames_as_whole(tmp_path):
    make_clips(tmp_path, 3, seconds=(20.0, 30.0))
    whole = FeatureStore(featurize(store_settings(config(tmp_path, "features.chunk_seconds=60"))))
    chunked_cfg = config(tmp_path, "features.chunk_seconds=3", f"paths.features={tmp_path / 'chunked'}")
    chunked = FeatureStore(featurize(store_settings(chunked_cfg)))
    assert whole.index["length"].tolist() == chunked.index["length"].tolist()
    assert 3 * 16000 // 512 < int(chunked.index["length"].min())  # really several chunks per clip
    for row in range(len(whole)):
        np.testing.assert_allclose(chunked.frames(row).astype(np.float32), whole.frames(row).astype(np.float32),
                                   atol=2e-2, rtol=1e-3)  # float16 rounding of the same numbers


def test_resplitting_the_manifest_keeps_the_store(clips, tmp_path):
    from audiocnn.experiment import data_module
    import shutil

    shutil.copytree(clips / "prepared", tmp_path / "prepared")
    cfg = config(tmp_path, f"paths.prepared={tmp_path / 'prepared'}", "paths.models=unused")
    cfg.paths.prepared = str(tmp_path / "prepared")
    root = featurize(store_settings(cfg))
    stamp = (root / "index.csv").stat().st_mtime_ns
    manifest_path = tmp_path / "prepared" / "manifest.csv"
    manifest = pd.read_csv(manifest_path, dtype=str)
    manifest["split"] = np.where(manifest["fold"] == "0", "test", "train")  # another fold as the test split
    manifest.to_csv(manifest_path, index=False)
    assert is_featurized(store_settings(cfg))
    assert featurize(store_settings(cfg)) == root and (root / "index.csv").stat().st_mtime_ns == stamp  # not re-featurized
    data = data_module(compose_config(["data=fsdd", f"data.root={tmp_path}", f"paths.prepared={tmp_path / 'prepared'}",
                                           f"paths.features={tmp_path / 'features'}"]))
    test_paths = set(data.store.index["path"].iloc[data.rows("test")])
    assert test_paths == set(manifest.loc[manifest["fold"] == "0", "path"])
    manifest.iloc[:-1].to_csv(manifest_path, index=False)  # other clips: the store is rebuilt
    assert not is_featurized(store_settings(cfg))
    assert store_dir(store_settings(cfg)) == root
