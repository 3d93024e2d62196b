"""Bad input never stops prepare: every bad file is handled or skipped, with its reason in report.json.

One CSV lists good clips and one of each kind of bad input; prepare runs with the working
directory at the test's folder and must write nothing outside `data/`.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings
from audiocnn.config import compose_config, validate_config
from audiocnn.data.audio import load_audio
from audiocnn.data.checks import LeakageError, check_leakage, scan_samples
from audiocnn.data.prepare import EmptySplitError, prepare

RNG = np.random.default_rng(1)


def noise(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    return RNG.uniform(-0.3, 0.3, (int(seconds * sr), channels)).astype(np.float32)


def write(path: Path, samples: np.ndarray, sr: int, subtype: str = "PCM_16") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sr, subtype=subtype)
    return path.name


def one_hour(path: Path, sr: int = 8000) -> str:
    """A one-hour PCM file, written block by block."""
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as out:
        for _ in range(60):
            out.write(noise(60, sr))
    return path.name


def build_inputs(folder: Path) -> tuple[Path, dict[str, str]]:
    """Audio files + list.csv; returns the CSV and {file name: expected reason category or 'kept'}."""
    audio = folder / "audio"
    expected, rows = {}, []

    def add(name, label="a", split="train", outcome="kept"):
        rows.append({"path": f"audio/{name}", "label": label, "split": split})
        expected[name] = outcome

    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for k in range(count):
            for label in ("a", "b"):
                add(write(audio / f"good_{split}_{label}{k}.wav", noise(0.2, 16000), 16000), label, split)
    (audio / "zero_length.wav").touch()
    add("zero_length.wav", outcome="empty")
    write(audio / "truncated.wav", noise(0.5, 16000), 16000)
    (audio / "truncated.wav").write_bytes((audio / "truncated.wav").read_bytes()[:30])  # header cut short
    add("truncated.wav", outcome="unreadable")
    (audio / "notes.wav").write_text("this is a text file, not audio\n")
    add("notes.wav", outcome="unreadable")
    bad = noise(0.3, 16000)
    bad[100], bad[2000], bad[4000] = np.nan, np.inf, -np.inf
    add(write(audio / "nan_inf.wav", bad, 16000, subtype="FLOAT"), outcome="non-finite samples")
    add(write(audio / "silence.wav", np.zeros((4000, 1), np.float32), 16000), outcome="silent")
    add(write(audio / "six_channels.wav", noise(0.2, 16000, channels=6), 16000), outcome="kept")
    add(write(audio / "rate_192k.wav", noise(0.2, 192000), 192000, subtype="PCM_24"), outcome="kept")
    add(one_hour(audio / "one_hour.wav"), outcome="too long")
    (audio / "folder.wav").mkdir()  # unreadable: a directory with an audio name (root can read any file)
    add("folder.wav", outcome="unreadable")
    (audio / "dangling.wav").symlink_to(audio / "gone.wav")
    add("dangling.wav", outcome="unreadable")
    add("never_recorded.wav", outcome="missing file")
    add(write(audio / "zebra.wav", noise(0.2, 16000), 16000), label="zebra", outcome="label not in the class list")
    rows.append({"path": "audio/good_train_a0.wav", "label": "a", "split": "train"})  # listed twice
    rows.append({"path": "audio/../audio/good_train_b0.wav", "label": "b", "split": "train"})  # same file, other spelling
    table = folder / "list.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table, expected


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_every_bad_file_is_skipped_or_handled_and_reported(tmp_path, monkeypatch, capsys):
    table, expected = build_inputs(tmp_path / "inputs")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    cfg = compose_config(["data=csv", f"data.csv={table}", "data.classes=[a,b]"])  # default paths: data/...
    validate_config(cfg)
    frame = prepare(prepare_settings(cfg))

    created = tree(tmp_path) - before
    assert created and all(p == "data" or p.startswith("data/") for p in created), sorted(created)

    report = json.loads(Path("data/prepared/report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped_files"]}
    for name, outcome in expected.items():
        if outcome == "kept":
            assert name in set(frame["path"].map(lambda p: Path(p).name)), name
        else:
            assert reasons[name].split(":")[0] == outcome, (name, reasons.get(name))
    duplicates = [s for s in report["skipped_files"] if s["reason"].startswith("duplicate path")]
    assert sorted(Path(s["path"]).name for s in duplicates) == ["good_train_a0.wav", "good_train_b0.wav"]
    assert report["kept"] == len(frame) == 18
    assert report["skipped"] == len(report["skipped_files"]) == 12
    assert sum(report["skipped_by_reason"].values()) == 12
    assert report["skipped_by_reason"]["unreadable"] == 4
    notes = {Path(h["path"]).name: h["note"] for h in report["handled_files"]}
    assert notes == {"six_channels.wav": "6 channels, downmixed to mono",
                     "rate_192k.wav": "192000 Hz, resampled to features.sr"}
    assert report["audio"] == {"sample_rates": {"16000": 17, "192000": 1}, "channels": {"1": 17, "6": 1}}
    # What featurize will read from them: mono at features.sr.
    for name in ("six_channels.wav", "rate_192k.wav"):
        wave = load_audio(tmp_path / "inputs" / "audio" / name, cfg.features.sr)
        assert wave.shape == (int(0.2 * cfg.features.sr),) and bool(wave.abs().max() > 0)

    out = capsys.readouterr().out.strip().splitlines()
    summary = [line for line in out if line.startswith("prepare:")]
    assert len(summary) == 1
    assert "kept 18 clips" in summary[0] and "skipped 12 (" in summary[0] and "4 unreadable" in summary[0]


def test_one_hour_file_is_kept_when_long_files_are_allowed_and_scanned_in_blocks(tmp_path):
    path = tmp_path / "hour.wav"
    sr = 8000
    with sf.SoundFile(path, "w", sr, 1, subtype="FLOAT") as out:  # 115 MB of float32 samples
        for minute in range(60):
            block = noise(60, sr)
            if minute == 59:
                block[-1] = np.nan  # the only bad sample is in the last block
            out.write(block)
    tracemalloc.start()
    non_finite, peak = scan_samples(path)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert non_finite == 1 and 0.29 < peak <= 0.3
    assert peak_bytes < 16 * 2**20  # blocks of 65,536 samples, never the 115 MB signal


def test_an_identical_file_in_two_given_splits_refuses_the_manifest(tmp_path):
    audio = tmp_path / "audio"
    rows = []
    for split, count in (("train", 3), ("val", 1), ("test", 1)):
        for k in range(count):
            for label in ("a", "b"):
                name = write(audio / f"{split}_{label}{k}.wav", noise(0.2, 8000), 8000)
                rows.append({"path": f"audio/{name}", "label": label, "split": split})
    (audio / "copy_of_train_a0.wav").write_bytes((audio / "train_a0.wav").read_bytes())
    rows.append({"path": "audio/copy_of_train_a0.wav", "label": "a", "split": "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    paths = [f"paths.{key}={tmp_path / 'out' / key}" for key in ("raw", "prepared")]
    cfg = compose_config(["data=csv", f"data.csv={tmp_path / 'list.csv'}", *paths])
    with pytest.raises(LeakageError, match=r"1 identical files .* in two splits: .*train_a0.wav = .*copy_of_train_a0"):
        prepare(prepare_settings(cfg))
    report = json.loads((tmp_path / "out" / "prepared" / "report.json").read_text())
    assert "copy_of_train_a0.wav" in report["leakage"]
    assert not (tmp_path / "out" / "prepared" / "manifest.csv").exists()

    # Without a given split, prepare makes one and keeps the two copies together.
    pd.DataFrame(rows).drop(columns="split").to_csv(tmp_path / "list.csv", index=False)
    frame = prepare(prepare_settings(cfg))
    copies = frame[frame["path"].str.contains("train_a0")]
    assert copies["split"].nunique() == 1 and copies["group"].nunique() == 1


def test_leakage_check_names_groups_in_two_splits():
    frame = pd.DataFrame({"path": [f"f{k}.wav" for k in range(8)], "md5": [str(k) for k in range(8)],
                          "group": ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"],
                          "split": ["train", "test", "train", "train", "val", "val", "test", "val"]})
    with pytest.raises(LeakageError, match=r"2 groups in two splits: s1 \(test, train\); s4 \(test, val\)"):
        check_leakage(frame, check_groups=True)
    check_leakage(frame, check_groups=False)  # a published split (FSDD's) is only checked for identical files


def _speaker_csv(folder: Path, leak: bool, group_column: bool) -> Path:
    """A CSV with its own split: speakers alice/bob in train, carol in val, dave in test (two labels each).

    With `leak`, one of alice's clips is listed in test as well. Groups come from a `group`
    column, or else from the file name (`<speaker>_<n>.wav`, read by `data.group_regex`).
    """
    audio, rows = folder / "audio", []
    speakers = {"alice": "train", "bob": "train", "carol": "val", "dave": "test"}
    for speaker, split in speakers.items():
        for k, label in enumerate(("a", "b", "a", "b")):
            name = write(audio / f"{speaker}_{k}.wav", noise(0.2, 8000), 8000)  # distinct noise: no identical files
            rows.append({"path": f"audio/{name}", "label": label, "split": split, "group": speaker})
    if leak:
        rows[3]["split"] = "test"  # alice_3.wav: alice now in train and test
    table = pd.DataFrame(rows)
    if not group_column:
        table = table.drop(columns="group")
    table.to_csv(folder / "list.csv", index=False)
    return folder / "list.csv"


@pytest.mark.parametrize("group_column", [True, False], ids=["group-column", "group-regex"])
def test_prepare_refuses_a_given_split_that_puts_one_speaker_in_two_splits(tmp_path, group_column):
    """Through `prepare` (not only `check_leakage`): a user's own split (data=csv) is checked for groups
    spanning splits; the error and report.json name the group, and no manifest is written. The same
    speakers without the stray clip prepare fine, split as given."""
    paths = [f"paths.{key}={tmp_path / 'out' / key}" for key in ("raw", "prepared")]
    regex = [] if group_column else ["data.group_regex='^(?P<group>[a-z]+)_'"]
    table = _speaker_csv(tmp_path / "leaky", leak=True, group_column=group_column)
    cfg = compose_config(["data=csv", f"data.csv={table}", *regex, *paths])
    with pytest.raises(LeakageError, match=r"1 groups in two splits: alice \(test, train\)"):
        prepare(prepare_settings(cfg))
    report = json.loads((tmp_path / "out" / "prepared" / "report.json").read_text())
    assert "alice (test, train)" in report["leakage"]
    assert not (tmp_path / "out" / "prepared" / "manifest.csv").exists()

    table = _speaker_csv(tmp_path / "clean", leak=False, group_column=group_column)
    cfg = compose_config(["data=csv", f"data.csv={table}", *regex, *paths])
    frame = prepare(prepare_settings(cfg))
    assert frame.groupby("group")["split"].unique().map(list).to_dict() == {
        "alice": ["train"], "bob": ["train"], "carol": ["val"], "dave": ["test"]}
    assert json.loads((tmp_path / "out" / "prepared" / "report.json").read_text())["leakage"] is None


def test_only_an_empty_split_stops_prepare_and_it_says_which(tmp_path):
    audio = tmp_path / "audio"
    rows = [{"path": f"audio/{write(audio / f'{s}{k}.wav', noise(0.2, 8000), 8000)}", "label": "a", "split": s}
            for s in ("train", "test") for k in range(2)]
    (audio / "bad.wav").write_text("not audio")
    rows.append({"path": "audio/bad.wav", "label": "a", "split": "val"})  # the only val clip is unusable
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    paths = [f"paths.{key}={tmp_path / 'out' / key}" for key in ("raw", "prepared")]
    cfg = compose_config(["data=csv", f"data.csv={tmp_path / 'list.csv'}", *paths])
    with pytest.raises(EmptySplitError, match=r"split 'val' is empty after skipping 1 unusable files"):
        prepare(prepare_settings(cfg))
    assert os.path.exists(tmp_path / "out" / "prepared" / "report.json")
