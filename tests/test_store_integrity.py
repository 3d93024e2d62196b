"""The feature store verifies itself: damaged shards are found, refused and rewritten, and NaN stops training.

Each test damages a real store (featurized from the tiny demo set in ~50 KB shards) the
way a disk or a careless copy would: a shard truncated to 40% of its frames, or its middle
overwritten with 0xFF bytes (float16 NaN, so the size still matches).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from audiocnn.settings import store_settings
from audiocnn.experiment import job_of
from audiocnn.errors import NonFiniteError, StoreError
from audiocnn.features.featurize import featurize, is_featurized, store_problem
from audiocnn.features.store import FeatureStore, ShardWriter, finished_shards
from audiocnn.training.windows import WindowDataset
from audiocnn.training.optim import optimizer_settings
from tests.conftest import tiny_config


def _store(tmp_path: Path, prepared_store, *overrides: str):
    """A store of the tiny demo set in small shards (2-3 clips each); (cfg, root)."""
    shutil.copytree(prepared_store.paths.prepared, tmp_path / "prepared")
    cfg = tiny_config(tmp_path, "features.shard_mb=0.05", "features.device=cpu", *overrides)
    return cfg, featurize(store_settings(cfg))


def _frames_by_path(root: Path) -> dict[str, np.ndarray]:
    store = FeatureStore(root)
    return {store.path_of(row): np.array(store.frames(row)) for row in range(len(store))}


def _stamps(root: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob("shard-*.f16")}


def _middle_shard(root: Path, split_of=None) -> tuple[str, int]:
    """(name, frames) of a shard in the middle of the store (with a clip of split `split_of`, if given)."""
    store = FeatureStore(root)
    names = list(store.shard_names)
    if split_of is not None:
        names = [n for n in names if (store.index.loc[store.index["shard"] == n, "path"].isin(split_of)).any()]
    name = names[len(names) // 2]
    return name, (root / f"{name}.f16").stat().st_size // (store.n_bins * 2)


def truncate(root: Path, name: str, frames: int, n_bins: int, fraction: float = 0.4) -> None:
    """Cut shard `name` to `fraction` of its frames, in whole frames."""
    with open(root / f"{name}.f16", "r+b") as handle:
        handle.truncate(int(frames * fraction) * n_bins * 2)


def overwrite_middle(root: Path, name: str) -> tuple[int, int]:
    """Overwrite the middle half of shard `name` with 0xFF bytes (float16 NaN); its (first, last) byte."""
    path = root / f"{name}.f16"
    size = path.stat().st_size
    first, last = size // 4, 3 * size // 4
    with open(path, "r+b") as handle:
        handle.seek(first)
        handle.write(b"\xff" * (last - first))
    return first, last


def _clips_touching(root: Path, name: str, first: int, last: int) -> set[str]:
    store = FeatureStore(root)
    rows = store.index[store.index["shard"] == name]
    bytes_per_frame = store.n_bins * 2
    hit = (rows["start"] * bytes_per_frame < last) & ((rows["start"] + rows["length"]) * bytes_per_frame > first)
    return set(rows.loc[hit, "path"])


def _assert_rewritten_only(cfg, root: Path, bad: str, before: dict, reference: dict) -> None:
    after = _stamps(root)
    assert f"{bad}.f16" not in after  # the bad shard was dropped ...
    kept = {n: s for n, s in before.items() if n != f"{bad}.f16"}
    assert {n: after[n] for n in kept} == kept  # ... and no other shard was touched
    assert len(after) == len(before)  # its clips went to one new shard
    assert _frames_by_path(root).keys() == reference.keys()
    for path, frames in _frames_by_path(root).items():
        np.testing.assert_array_equal(frames, reference[path])
    assert store_problem(store_settings(cfg), checksum=True) is None


def test_a_shard_truncated_to_40_percent_is_refused_then_only_it_is_rewritten(tmp_path, prepared_store):
    cfg, root = _store(tmp_path, prepared_store)
    reference, before = _frames_by_path(root), _stamps(root)
    name, frames = _middle_shard(root)
    truncate(root, name, frames, cfg.features.n_bins)

    assert not is_featurized(store_settings(cfg))  # the up-to-date check sees the size
    with pytest.raises(StoreError, match=rf"{name}\.f16 is \d+ bytes, \d+ were written .*run the featurize stage"):
        FeatureStore(root)  # what training opens: one line naming the shard, not a numpy broadcast error
    from audiocnn.experiment import train_job, job_of
    from audiocnn.training.train import train

    with pytest.raises(StoreError, match=rf"{name}\.f16 is \d+ bytes") as refused:
        train(train_job(job_of(cfg)))
    assert "\n" not in str(refused.value)

    assert featurize(store_settings(cfg)) == root
    _assert_rewritten_only(cfg, root, name, before, reference)
    meta = json.loads((root / "store.json").read_text())
    assert meta["complete"] and set(meta["shard_files"]) == set(finished_shards(root))


def test_a_shard_with_its_middle_overwritten_by_0xff_is_found_by_verify_and_rewritten(tmp_path, prepared_store):
    cfg, root = _store(tmp_path, prepared_store)
    reference, before = _frames_by_path(root), _stamps(root)
    name, _ = _middle_shard(root)
    overwrite_middle(root, name)
    damaged = _stamps(root)

    assert is_featurized(store_settings(cfg))  # same size: only the checksum can tell
    assert featurize(store_settings(cfg)) == root and _stamps(root) == damaged  # features.verify=false: sizes only, reused
    problem = store_problem(store_settings(cfg), checksum=True)
    assert isinstance(problem, StoreError) and f"{name}.f16 does not match the blake2b checksum" in str(problem)

    verify = tiny_config(tmp_path, "features.shard_mb=0.05", "features.device=cpu", "features.verify=true")
    assert not is_featurized(store_settings(verify))  # with features.verify=true the up-to-date check reads the checksums
    assert featurize(store_settings(verify)) == root
    _assert_rewritten_only(cfg, root, name, before, reference)


def test_resuming_an_incomplete_store_checks_the_finished_shards_checksums(tmp_path, prepared_store):
    cfg, root = _store(tmp_path, prepared_store)
    reference = _frames_by_path(root)
    meta = json.loads((root / "store.json").read_text())
    name, _ = _middle_shard(root)
    overwrite_middle(root, name)
    (root / "index.csv").unlink()  # as if killed before the end
    (root / "store.json").write_text(json.dumps({**meta, "complete": False}))

    assert featurize(store_settings(cfg)) == root  # features.verify=false, but a resume checks checksums
    assert f"{name}.f16" not in _stamps(root)
    for path, frames in _frames_by_path(root).items():
        np.testing.assert_array_equal(frames, reference[path])
    assert store_problem(store_settings(cfg), checksum=True) is None


def test_a_store_without_shard_records_is_refused_and_rebuilt(tmp_path, prepared_store):
    cfg, root = _store(tmp_path, prepared_store)
    meta = json.loads((root / "store.json").read_text())
    del meta["shard_files"]
    (root / "store.json").write_text(json.dumps(meta))
    for record in root.glob("shard-*.json"):
        record.unlink()  # as an older audiocnn wrote it
    with pytest.raises(StoreError, match="written without shard sizes and checksums"):
        FeatureStore(root)
    assert not is_featurized(store_settings(cfg))
    featurize(store_settings(cfg))
    assert store_problem(store_settings(cfg), checksum=True) is None and len(FeatureStore(root)) == meta["clips"]


def test_nan_frames_stop_training_naming_the_clip_and_the_run_is_failed_with_the_reason(tmp_path, prepared_store):
    from audiocnn.data.prepare import read_manifest
    from audiocnn.experiment import train_job
    from audiocnn.training.train import train

    cfg, root = _store(tmp_path, prepared_store)
    manifest = read_manifest(cfg.paths.prepared)
    name, _ = _middle_shard(root, split_of=set(manifest.loc[manifest["split"] == "train", "path"]))
    first, last = overwrite_middle(root, name)
    bad = _clips_touching(root, name, first, last)

    with pytest.raises(NonFiniteError) as stopped:
        train(train_job(job_of(cfg)))
    message = str(stopped.value)
    assert "\n" not in message and "non-finite values" in message and "features.verify=true" in message
    assert any(f"clip {path} " in message for path in bad), (message, bad)

    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert [run.info.status for run in runs] == ["FAILED"]
    assert runs[0].data.tags["audiocnn.failure"] == f"NonFiniteError: {message}"


def test_a_worker_s_non_finite_error_reaches_the_main_process_as_one_line(tmp_path, prepared_store):
    cfg, root = _store(tmp_path, prepared_store)
    name, _ = _middle_shard(root)
    first, last = overwrite_middle(root, name)
    store = FeatureStore(root)
    bad_rows = np.flatnonzero(store.index["path"].isin(_clips_touching(root, name, first, last)))
    for mode in ("random", "sliding"):  # training windows, and evaluate's sliding windows
        dataset = WindowDataset(store, bad_rows, np.zeros(len(bad_rows), np.int64), 32, mode, floor=-9.0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=lambda batch: batch)
        with pytest.raises(NonFiniteError) as stopped:
            next(iter(loader))
        assert "\n" not in str(stopped.value) and str(stopped.value).startswith(f"feature store {root}: clip ")


def test_a_non_finite_loss_with_finite_inputs_says_training_diverged():

    from audiocnn.training.module import Classifier

    class Diverged(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 3), float("nan"))

    module = Classifier(Diverged(), optimizer_settings({"_target_": "torch.optim.AdamW", "name": "adamw", "lr": 1e-3}), n_classes=3)
    with pytest.raises(NonFiniteError, match=r"train_loss=nan at epoch 0, step 0 with finite inputs: training "
                                             r"diverged; lower optimizer.lr"):
        module.training_step((torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])), 0)


def test_shard_temporary_names_are_unique_per_process(tmp_path):
    import os

    writer = ShardWriter(tmp_path, n_bins=4, shard_bytes=1 << 20)
    writer.add({"clip_id": 0, "path": "a.wav", "label": "x"}, np.zeros((3, 4), np.float16), last=False)
    assert [p.name for p in tmp_path.iterdir()] == [f".shard-00000.f16.tmp-{os.getpid()}"]
    writer.add({"clip_id": 0, "path": "a.wav", "label": "x"}, np.ones((2, 4), np.float16))
    writer.close_shard()
    record = json.loads((tmp_path / "shard-00000.json").read_text())
    assert record["bytes"] == 5 * 4 * 2 == (tmp_path / "shard-00000.f16").stat().st_size
    assert record["rows"] == 1 and record["frames"] == 5 and len(record["blake2b"]) == 32
