"""The prepare stage: manifest, classes, report; skipped files; empty splits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings
from audiocnn.data.prepare import EmptySplitError, MANIFEST_COLUMNS, prepare, probe_clips
from audiocnn.data.sources.demo import CLASSES
from tests.conftest import tiny_config


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_prepare_writes_manifest_classes_and_report_only_under_its_paths(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = tiny_config(tmp_path / "out")
    frame = prepare(prepare_settings(cfg))

    prepared = Path(cfg.paths.prepared)
    assert sorted(os.listdir(prepared)) == ["classes.json", "manifest.csv", "report.json", "settings.json"]
    manifest = pd.read_csv(prepared / "manifest.csv")
    assert list(manifest.columns) == ["path", "label", "split", "fold", "group", "duration", "sr"]
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == len(CLASSES) * cfg.data.clips_per_class == len(frame)
    assert json.loads((prepared / "classes.json").read_text()) == list(CLASSES)
    assert set(manifest["label"]) == set(CLASSES)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["sr"] == 16000).all()
    assert manifest["duration"].between(cfg.data.min_duration, cfg.data.max_duration).all()
    assert all(Path(p).is_file() for p in manifest["path"])

    report = json.loads((prepared / "report.json").read_text())
    assert report["kept"] == len(manifest) and report["skipped"] == 0 and report["skipped_files"] == []
    assert report["splits"] == manifest["split"].value_counts().to_dict()

    # Only the configured raw and prepared folders were written (and, beside paths.prepared, its
    # writer lock file: the owner file goes when the lock is released); nothing in the working directory.
    assert os.listdir(cwd) == []
    assert sorted(os.listdir(tmp_path / "out")) == [".prepared.lock", "prepared", "raw"]
    assert all(Path(p).resolve().is_relative_to(Path(cfg.paths.raw).resolve()) for p in manifest["path"])


def _wav(path: Path, samples: int = 8000, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Quiet noise: an all-zero file would be skipped as silent.
    sf.write(path, np.random.default_rng(samples).uniform(-0.1, 0.1, samples).astype(np.float32), sr, subtype="PCM_16")
    return path


def test_probe_clips_skips_unusable_files_with_a_reason(tmp_path):
    good = _wav(tmp_path / "good.wav", samples=24000)
    other = _wav(tmp_path / "other.wav", samples=8000, sr=8000)
    empty = _wav(tmp_path / "empty.wav", samples=0)
    text = tmp_path / "text.wav"
    text.write_text("not audio")
    clips = [
        {"path": str(good), "label": "a", "group": "g1"},
        {"path": str(tmp_path / "sub" / ".." / "good.wav"), "label": "a", "group": "g1"},  # same file again
        {"path": str(other), "label": "zebra", "group": "g2"},
        {"path": str(text), "label": "b", "group": "g3"},
        {"path": str(empty), "label": "b", "group": "g4"},
        {"path": str(tmp_path / "missing.wav"), "label": "b", "group": "g5"},
    ]
    kept, skipped = probe_clips(clips, ["a", "b"])

    assert kept == [{"path": str(good), "label": "a", "group": "g1", "duration": 1.5, "sr": 16000, "channels": 1,
                     "md5": hashlib.md5(good.read_bytes()).hexdigest(), "note": ""}]
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert reasons["good.wav"] == "duplicate path: listed more than once"
    assert reasons["other.wav"] == "label not in the class list: 'zebra'"
    assert reasons["text.wav"].startswith("unreadable: ")
    assert reasons["empty.wav"] == "empty: no audio frames"
    assert reasons["missing.wav"] == "missing file: no such file"
    assert len(skipped) == 5


@pytest.mark.parametrize(
    "data, split",
    [
        ({"val_fraction": 0.0}, "val"),      # no share for val
        ({"clips_per_class": 0}, "train"),   # no usable clip at all
    ],
)
def test_an_empty_split_stops_prepare_and_names_the_split(tmp_path, data, split):
    """The guard behind the settings' checks (which refuse these values): data can leave a split empty too."""
    cfg = tiny_config(tmp_path)
    job = prepare_settings(cfg)
    job = dataclasses.replace(job, data=job.data.model_copy(update=data))  # model_copy does not validate
    with pytest.raises(EmptySplitError, match=rf"split '{split}' is empty"):
        prepare(job)
    prepared = Path(cfg.paths.prepared)
    # The report says why; no manifest that a later stage could mistake for a good one.
    report = json.loads((prepared / "report.json").read_text())
    assert report["splits"][split] == 0
    assert not (prepared / "manifest.csv").exists()
    assert not (prepared / "classes.json").exists()


def test_is_prepared_only_for_the_same_data_settings(tmp_path):
    from audiocnn.data.prepare import is_prepared, prepare
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path)
    assert not is_prepared(prepare_settings(cfg))
    prepare(prepare_settings(cfg))
    assert is_prepared(prepare_settings(cfg))
    assert is_prepared(prepare_settings(tiny_config(tmp_path, "model=cnn")))  # other stages' settings do not matter
    assert not is_prepared(prepare_settings(tiny_config(tmp_path, "data.clips_per_class=5")))
    assert not is_prepared(prepare_settings(tiny_config(tmp_path, "seed=1")))
