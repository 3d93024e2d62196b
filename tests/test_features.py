"""Features: the log-CQT front-end, the feature store, and the featurize stage (incl. resume)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.data.audio import load_audio
from audiocnn.features.cqt import LogCQT, n_frames
from audiocnn.features.featurize import featurize, store_dir
from audiocnn.features.store import FeatureStore, shard_name
from tests.conftest import tiny_config

SR, HOP, FMIN, N_BINS, BPO = 16000, 512, 32.70, 84, 12


@pytest.fixture(scope="module")
def frontend() -> LogCQT:
    return LogCQT(SR, HOP, FMIN, N_BINS, BPO, amin=1e-4).eval()


def _midi_hz(midi: int) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


@pytest.mark.parametrize("midi", [26, 30, 45, 57, 69, 81, 93, 100, 106])
def test_a_pure_tone_peaks_at_its_bin(frontend, midi):
    freq = _midi_hz(midi)
    t = torch.arange(SR) / SR
    with torch.no_grad():
        spectrum = frontend((0.5 * torch.sin(2 * math.pi * freq * t))[None])[0]  # (n_bins, frames)
    profile = spectrum[:, 8:-8].mean(dim=1)  # away from the edges
    assert int(profile.argmax()) == round(BPO * math.log2(freq / FMIN))


def test_silence_maps_to_the_log_floor(frontend):
    with torch.no_grad():
        spectrum = frontend(torch.zeros(1, 4000))
    torch.testing.assert_close(spectrum, torch.full_like(spectrum, math.log(1e-4)))


@pytest.mark.parametrize("samples", [600, 5123, 16000, 16001, 33333])
def test_frame_count_is_n_frames(frontend, samples):
    with torch.no_grad():
        spectrum = frontend(torch.randn(2, samples))
    assert spectrum.shape == (2, N_BINS, n_frames(samples, HOP))
    assert n_frames(samples, HOP) == samples // HOP + 1


def test_frames_are_the_same_alone_and_zero_padded_in_a_batch(frontend):
    generator = torch.Generator().manual_seed(0)
    short, long = 0.1 * torch.randn(10000, generator=generator), 0.1 * torch.randn(21000, generator=generator)
    batch = torch.zeros(2, 21000)
    batch[0, :10000], batch[1] = short, long
    with torch.no_grad():
        alone = frontend(short[None])[0]
        together = frontend(batch)[0, :, : n_frames(10000, HOP)]
    assert alone.shape == together.shape
    torch.testing.assert_close(alone, together, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def cpu_store_cfg(prepared_store, tmp_path_factory):
    """The prepared tiny dataset featurized on the CPU (a GPU's TF32 convolutions would not
    match the CPU reference to float16 precision)."""
    root = tmp_path_factory.mktemp("cpu_store")
    shutil.copytree(prepared_store.paths.prepared, root / "prepared")
    cfg = tiny_config(root, "features.device=cpu")
    featurize(store_settings(cfg))
    return cfg


def test_featurize_stores_the_log_cqt_of_every_manifest_clip(cpu_store_cfg, frontend):
    cfg = cpu_store_cfg
    store = FeatureStore(store_dir(store_settings(cfg)))
    manifest = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv")
    assert store.meta["complete"] and store.meta["clips"] == len(manifest) == len(store)
    assert store.index["clip_id"].tolist() == list(range(len(manifest)))
    for column in ("path", "label"):  # no split: the store does not depend on it
        assert store.index[column].tolist() == manifest[column].tolist()
    assert store.meta["frames"] == int(store.index["length"].sum())

    # A few clips, among them the longest and the shortest, recomputed alone.
    lengths = store.index["length"]
    for row in sorted({0, int(lengths.idxmax()), int(lengths.idxmin()), len(store) - 1}):
        wave = load_audio(store.index.loc[row, "path"], cfg.features.sr)
        with torch.no_grad():
            expected = frontend(wave[None])[0].T.numpy()  # (frames, n_bins)
        stored = store.frames(row)
        assert stored.shape == (n_frames(len(wave), cfg.features.hop_length), cfg.features.n_bins)
        assert stored.dtype == np.float16
        np.testing.assert_allclose(stored.astype(np.float32), expected, atol=1e-2, rtol=2e-3)


def test_store_frames_are_a_memory_mapped_view(prepared_store):
    store = FeatureStore(store_dir(store_settings(prepared_store)))
    frames = store.frames(3)
    shard = store.shard(store.index.loc[3, "shard"])
    assert isinstance(shard, np.memmap)
    assert not frames.flags.owndata and np.shares_memory(frames, shard)
    base = frames
    while not isinstance(base, np.memmap) and base.base is not None:
        base = base.base
    assert isinstance(base, np.memmap)
    assert not frames.flags.writeable  # opened read-only
    # Pickling (DataLoader workers) drops the maps; they are reopened on demand.
    import pickle

    clone = pickle.loads(pickle.dumps(store))
    assert clone._shards == {}
    np.testing.assert_array_equal(clone.frames(3), frames)


@pytest.mark.parametrize(
    "override",
    ["features.sr=22050", "features.hop_length=256", "features.fmin=40.0", "features.n_bins=72",
     "features.bins_per_octave=24", "features.amin=1e-5"],
)
def test_store_name_changes_with_every_feature_parameter(tmp_path, override):
    assert store_dir(store_settings(tiny_config(tmp_path, override))) != store_dir(store_settings(tiny_config(tmp_path)))


def test_store_name_ignores_settings_that_do_not_shape_frames(tmp_path):
    base = store_dir(store_settings(tiny_config(tmp_path)))
    assert base.parent == tmp_path / "features" and base.name.startswith("demo-")
    for override in ("features.batch_size=3", "features.num_workers=1", "features.shard_mb=2"):
        assert store_dir(store_settings(tiny_config(tmp_path, override))) == base, override


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.name != "store.json"}


def test_a_killed_featurize_resumes_from_its_finished_shards(tmp_path, prepared_store):
    shutil.copytree(prepared_store.paths.prepared, tmp_path / "prepared")
    # ~50 KB shards (3-5 clips each); on the CPU so both runs compute bit-identical frames.
    cfg = tiny_config(tmp_path, "features.shard_mb=0.05", "features.device=cpu")
    root = featurize(store_settings(cfg))
    meta = json.loads((root / "store.json").read_text())
    assert meta["complete"] and meta["shards"] >= 4
    shards = sorted(root.glob("shard-*.f16"))
    assert len(shards) == meta["shards"]
    uninterrupted = _snapshot(root)

    # Simulate a kill while the last shard was being written.
    last = shard_name(meta["shards"] - 1)
    (root / "index.csv").unlink()
    (root / f"{last}.f16").unlink()
    (root / f"{last}.csv").unlink()
    (root / f".{last}.f16.tmp").write_bytes(b"half a shard")
    (root / "store.json").write_text(json.dumps({**meta, "complete": False}))
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards[:-1]}

    with pytest.raises(RuntimeError, match="incomplete"):
        FeatureStore(root)
    assert featurize(store_settings(cfg)) == root

    assert _snapshot(root) == uninterrupted  # index.csv and every shard, byte for byte
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in
            ((n, root / n) for n in kept)} == kept  # finished shards were reused, not rewritten
    resumed = json.loads((root / "store.json").read_text())
    assert resumed["complete"] and resumed["clips"] == meta["clips"] and resumed["frames"] == meta["frames"]
    assert not list(root.glob(".*tmp*"))
    assert len(FeatureStore(root)) == meta["clips"]


def test_a_complete_store_is_reused_and_a_changed_manifest_rebuilds_it(tmp_path, prepared_store):
    shutil.copytree(prepared_store.paths.prepared, tmp_path / "prepared")
    cfg = tiny_config(tmp_path)
    root = featurize(store_settings(cfg))
    stamp = (root / "index.csv").stat().st_mtime_ns
    assert featurize(store_settings(cfg)) == root
    assert (root / "index.csv").stat().st_mtime_ns == stamp  # up to date: nothing rewritten

    manifest_path = tmp_path / "prepared" / "manifest.csv"
    manifest = pd.read_csv(manifest_path)
    manifest.iloc[:-5].to_csv(manifest_path, index=False)
    assert featurize(store_settings(cfg)) == root
    store = FeatureStore(root)
    assert len(store) == len(manifest) - 5
    assert store.index["path"].tolist() == manifest["path"].iloc[:-5].tolist()


def test_is_featurized_follows_the_manifest(tmp_path):
    from audiocnn.data.prepare import prepare
    from audiocnn.features.featurize import featurize, is_featurized
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, "data.clips_per_class=4")
    prepare(prepare_settings(cfg))
    assert not is_featurized(store_settings(cfg))
    featurize(store_settings(cfg))
    assert is_featurized(store_settings(cfg))
    smaller = tiny_config(tmp_path, "data.clips_per_class=3")
    prepare(prepare_settings(smaller))  # same store folder (same features), new manifest
    assert not is_featurized(store_settings(smaller))
    featurize(store_settings(smaller))
    assert is_featurized(store_settings(smaller))


def test_featurize_on_cpu_leaves_the_decoding_workers_their_cores(monkeypatch):
    """Intra-op threads beside the decoding workers: at most the cores they leave, at least one;
    restored afterwards, and untouched on a GPU or without workers."""
    from audiocnn.features.featurize import _cores_beside

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with _cores_beside(2, torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with _cores_beside(1, torch.device("cpu")):
            assert torch.get_num_threads() == 1
        for workers, device in ((0, "cpu"), (2, "cuda")):
            with _cores_beside(workers, torch.device(device)):
                assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
