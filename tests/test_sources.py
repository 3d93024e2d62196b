"""Dataset adapters on tiny fixtures laid out exactly like the real datasets.

Each fixture copies the real folder names, metadata files and columns (a few 0.1-0.3 s WAVs
of noise written with soundfile); the tests check classes, official splits, folds and groups,
and run the real prepare stage on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings
from audiocnn.config import ConfigError, compose_config, validate_config
from audiocnn.data import sources
from audiocnn.data.prepare import prepare
from tests.conftest import TINY

RNG = np.random.default_rng(0)


def wav(path: Path, seconds: float = 0.2, sr: int = 8000, channels: int = 1, fmt: str | None = None,
        subtype: str | None = None) -> Path:
    """Write `seconds` of quiet noise (never silent, so prepare keeps it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = RNG.uniform(-0.3, 0.3, (int(seconds * sr), channels)).astype(np.float32)
    sf.write(path, samples, sr, format=fmt, subtype=subtype)
    return path


def source_config(out: Path, name: str, *overrides: str):
    """The tiny test config for `data=<name>`, every path under `out`."""
    paths = [f"paths.{key}={out / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    tiny = [o for o in TINY if not o.startswith("data.")]
    return compose_config([f"data={name}", *tiny, *paths, f"tracking.uri=sqlite:///{out / 'mlflow.db'}", *overrides])


def config(tmp_path: Path, name: str, *overrides: str):
    cfg = source_config(tmp_path / "out", name, *overrides)
    validate_config(cfg)
    return cfg


def manifest(cfg) -> pd.DataFrame:
    return pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv", dtype=str, keep_default_na=False)


def assert_groups_in_one_split(frame: pd.DataFrame) -> None:
    assert (frame.groupby("group")["split"].nunique() == 1).all()


# ---------------------------------------------------------------- ESC-50

def esc50_fixture(root: Path) -> Path:
    """ESC-50-master/: meta/esc50.csv + audio/{fold}-{src}-{take}-{target}.wav."""
    rows = []
    for target, category, esc10 in ((0, "dog", True), (1, "rooster", True), (2, "pig", False)):
        for fold in range(1, 6):
            src = 1000 + 10 * target + fold
            for take in "AB":
                name = f"{fold}-{src}-{take}-{target}.wav"
                wav(root / "audio" / name, sr=44100, seconds=0.1)
                rows.append([name, fold, target, category, esc10, src, take])
    (root / "meta").mkdir(parents=True)
    pd.DataFrame(rows, columns=["filename", "fold", "target", "category", "esc10", "src_file", "take"]).to_csv(
        root / "meta" / "esc50.csv", index=False)
    return root


def test_esc50_classes_folds_and_groups(tmp_path):
    root = esc50_fixture(tmp_path / "ESC-50-master")
    cfg = config(tmp_path, "esc50", f"data.root={root}")
    clips, classes = sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert classes == ["dog", "rooster", "pig"]  # in target order
    assert len(clips) == 30 and {c["fold"] for c in clips} == {"1", "2", "3", "4", "5"}
    first = next(c for c in clips if c["path"].endswith("1-1001-A-0.wav"))
    assert first["label"] == "dog" and first["group"] == "src-1001" and "split" not in first

    esc10, classes10 = sources.collect(prepare_settings(config(tmp_path, "esc50", f"data.root={root}", "data.esc10=true")).data, root)
    assert classes10 == ["dog", "rooster"] and len(esc10) == 20

    frame = prepare(prepare_settings(cfg))
    assert set(frame["split"]) == {"train", "val", "test"}
    assert_groups_in_one_split(frame)  # both takes of one source recording share a split
    assert set(manifest(cfg)["fold"]) == {"1", "2", "3", "4", "5"}


# ---------------------------------------------------------------- UrbanSound8K

def urbansound8k_fixture(root: Path) -> Path:
    """UrbanSound8K/: metadata/UrbanSound8K.csv + audio/fold1..10/{fsID}-{classID}-{occ}-{slice}.wav."""
    rows = []
    for class_id, name in ((0, "air_conditioner"), (3, "dog_bark")):
        for fold in range(1, 11):
            fs_id = 100 * class_id + fold
            file = f"{fs_id}-{class_id}-0-0.wav"
            # Mixed rates and channel counts, as in the real dataset.
            wav(root / "audio" / f"fold{fold}" / file, sr=(44100, 48000, 22050)[fold % 3], channels=1 + fold % 2,
                seconds=0.1)
            rows.append([file, fs_id, 0.0, 0.1, 1, fold, class_id, name])
    (root / "metadata").mkdir(parents=True)
    pd.DataFrame(rows, columns=["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID",
                                "class"]).to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    return root


def test_urbansound8k_folds_paths_and_mixed_audio(tmp_path):
    root = urbansound8k_fixture(tmp_path / "UrbanSound8K")
    cfg = config(tmp_path, "urbansound8k", f"data.root={root}")
    clips, classes = sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert classes == ["air_conditioner", "dog_bark"]
    assert {c["fold"] for c in clips} == {str(k) for k in range(1, 11)}
    assert all(Path(c["path"]).parent.name == f"fold{c['fold']}" for c in clips)
    frame = prepare(prepare_settings(cfg))
    assert len(frame) == 20 and set(frame["sr"]) == {22050, 44100, 48000}
    report = json.loads((Path(cfg.paths.prepared) / "report.json").read_text())
    assert report["audio"]["channels"] == {"1": 10, "2": 10}


# ---------------------------------------------------------------- GTZAN

GTZAN_FILES = {  # excerpt -> split in the fault-filtered lists (None = left out of them)
    "blues.00000": "val", "blues.00012": "test", "blues.00029": "train",
    "classical.00000": "val", "classical.00011": "test", "classical.00030": "train", "classical.00042": None,
}


def gtzan_fixture(root: Path, folder: str = "genres_original", ext: str = "wav") -> Path:
    for excerpt in GTZAN_FILES:
        genre = excerpt.split(".")[0]
        wav(root / folder / genre / f"{excerpt}.{ext}", sr=22050, seconds=0.1, fmt="AU" if ext == "au" else None,
            subtype="PCM_16")
    return root


def test_gtzan_fault_filtered_split_is_the_published_one(tmp_path):
    from audiocnn.data.sources.gtzan import fault_filtered_split

    split = fault_filtered_split()
    counts = pd.Series(split).value_counts().to_dict()
    assert counts == {"train": 443, "val": 197, "test": 290}  # Kereliuk, Sturm & Larsen (2015)

    root = gtzan_fixture(tmp_path / "gtzan")
    cfg = config(tmp_path, "gtzan", f"data.root={root}")
    clips, classes = sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert classes[:2] == ["blues", "classical"] and len(classes) == 10
    got = {Path(c["path"]).name.rsplit(".", 1)[0]: c.get("split") for c in clips}
    assert got == GTZAN_FILES
    skipped = [c for c in clips if "skip" in c]
    assert [Path(c["path"]).name for c in skipped] == ["classical.00042.wav"]

    prepare(prepare_settings(cfg))
    report = json.loads((Path(cfg.paths.prepared) / "report.json").read_text())
    assert report["kept"] == 6 and report["skipped_by_reason"] == {"not in the fault-filtered split (repeated, distorted or mislabelled excerpt)": 1}


def test_gtzan_random_scheme_and_the_original_archive_layout(tmp_path):
    root = gtzan_fixture(tmp_path / "gtzan", folder="genres", ext="au")  # genres.tar.gz holds .au files
    cfg = config(tmp_path, "gtzan", f"data.root={root}", "data.split_scheme=random")
    clips, _ = sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert len(clips) == 7 and all("split" not in c and "skip" not in c for c in clips)
    with pytest.raises(ConfigError, match="data.split_scheme=artist: allowed: 'fault_filtered' or 'random'"):
        config(tmp_path, "gtzan", f"data.root={root}", "data.split_scheme=artist")


# ---------------------------------------------------------------- Speech Commands v2

def speechcommands_fixture(root: Path) -> Path:
    """<word>/<speaker>_nohash_<n>.wav, validation_list.txt, testing_list.txt, _background_noise_/."""
    speakers = {"0a7c2a8d": "test", "0b09edd3": "val", "0c2ca723": "train", "0d6d7360": "train"}
    lists = {"test": [], "val": []}
    for word in ("yes", "no", "up"):
        for speaker, split in speakers.items():
            for n in range(2):
                wav(root / word / f"{speaker}_nohash_{n}.wav", sr=16000, seconds=0.1)
                if split in lists:
                    lists[split].append(f"{word}/{speaker}_nohash_{n}.wav")
    wav(root / "_background_noise_" / "white_noise.wav", sr=16000, seconds=0.3)
    (root / "_background_noise_" / "README.md").write_text("noise for augmentation\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    (root / "validation_list.txt").write_text("\n".join(lists["val"]) + "\n")
    return root


def test_speechcommands_official_lists_and_no_background_class(tmp_path):
    root = speechcommands_fixture(tmp_path / "speech_commands_v0.02")
    cfg = config(tmp_path, "speechcommands", f"data.root={root}")
    clips, classes = sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert classes == ["no", "up", "yes"]
    assert not any("_background_noise_" in c["path"] for c in clips)
    frame = prepare(prepare_settings(cfg))
    assert frame.groupby("split").size().to_dict() == {"test": 6, "train": 12, "val": 6}
    assert set(frame[frame["split"] == "test"]["group"]) == {"0a7c2a8d"}
    assert_groups_in_one_split(frame)

    subset, words = sources.collect(prepare_settings(config(tmp_path, "speechcommands", f"data.root={root}",
                                                      "data.classes=[yes,no]")).data, root)
    assert words == ["yes", "no"] and {c["label"] for c in subset} == {"yes", "no"}


# ---------------------------------------------------------------- FSDD

def fsdd_fixture(root: Path) -> Path:
    for digit in range(3):
        for speaker in ("jackson", "theo"):
            for index in (0, 4, 5, 9, 10, 49):
                wav(root / "recordings" / f"{digit}_{speaker}_{index}.wav", sr=8000, seconds=0.1)
    return root


def test_fsdd_official_split_folds_are_speakers(tmp_path):
    root = fsdd_fixture(tmp_path / "free-spoken-digit-dataset")
    cfg = config(tmp_path, "fsdd", f"data.root={root}")
    frame = prepare(prepare_settings(cfg))
    index = frame["path"].str.extract(r"_(\d+)\.wav$")[0].astype(int)
    assert (frame.loc[index < 5, "split"] == "test").all()
    assert (frame.loc[index.between(5, 9), "split"] == "val").all()
    assert (frame.loc[index >= 10, "split"] == "train").all()
    assert set(manifest(cfg)["fold"]) == {"jackson", "theo"}
    assert (frame["group"] == manifest(cfg)["fold"]).all()
    # Every speaker is in every split by design: the group check does not apply to this split.
    assert frame.groupby("group")["split"].nunique().eq(3).all()


def test_choosing_fsdd_selects_the_speech_front_end_unless_features_is_given():
    speech = compose_config(["features=speech"]).features
    assert compose_config(["data=fsdd"]).features == speech
    assert compose_config(["data=fsdd", "features=cqt"]).features == compose_config([]).features
    assert compose_config([]).features.sr == 16000  # the default dataset keeps the default front-end


@pytest.mark.parametrize("overrides, sr", [(["data=fsdd"], 8000), (["data=fsdd", "features=cqt"], 16000)])
def test_dvc_exp_run_composition_selects_the_speech_front_end_too(tmp_path, overrides, sr):
    """`dvc exp run -S data=fsdd` writes params.yaml with DVC's own Hydra composition."""
    from dvc.utils.hydra import compose_and_dump
    from omegaconf import OmegaConf

    from audiocnn.config import CONF_DIR

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF_DIR), None, "config", str(tmp_path), overrides)
    params = OmegaConf.load(out)
    assert params.features.sr == sr and params.data.name == "fsdd"


# ---------------------------------------------------------------- folder

def test_folder_grouped_by_regex_with_every_format(tmp_path):
    root = tmp_path / "my_sounds"
    formats = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"),
               ("mp3", "MP3", "MPEG_LAYER_III")]
    for label in ("cat", "dog"):
        for speaker in range(8):
            ext, fmt, subtype = formats[speaker % 4]
            for take in range(2):
                wav(root / label / f"spk{speaker}_{take}.{ext}", sr=16000, seconds=0.2, fmt=fmt, subtype=subtype)
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    cfg = config(tmp_path, "folder", f"data.root={root}", "data.group_regex='^(?P<group>spk\\d+)_'")
    clips, classes = sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert classes == ["cat", "dog"] and len(clips) == 32
    assert {c["group"] for c in clips} == {f"spk{k}" for k in range(8)}
    frame = prepare(prepare_settings(cfg))
    assert len(frame) == 32 and set(frame["split"]) == {"train", "val", "test"}
    assert_groups_in_one_split(frame)
    assert {Path(p).suffix for p in frame["path"]} == {".wav", ".flac", ".ogg", ".mp3"}


def test_folder_needs_a_root_and_a_valid_regex(tmp_path):
    with pytest.raises(ConfigError, match="data.root=null"):
        config(tmp_path, "folder")
    with pytest.raises(ConfigError, match="data.group_regex=no_group"):
        config(tmp_path, "folder", f"data.root={tmp_path}", "data.group_regex=no_group")


# ---------------------------------------------------------------- csv

def test_csv_relative_paths_optional_columns_and_split_names(tmp_path):
    data = tmp_path / "project"
    for name in ("a1", "a2", "b1", "b2", "c1", "c2"):
        wav(data / "clips" / f"{name}.wav")
    table = data / "labels.csv"
    pd.DataFrame({"path": ["clips/a1.wav", "clips/a2.wav", "clips/b1.wav", "clips/b2.wav", "clips/c1.wav",
                           str(data / "clips" / "c2.wav")],
                  "label": ["x", "y", "x", "y", "x", "y"],
                  "split": ["training", "train", "Validation", "val", "test", "test"],
                  "group": ["g1", "g1", "g2", "g2", "g3", "g3"], "fold": ["1", "1", "2", "2", "3", "3"]}).to_csv(
        table, index=False)
    cfg = config(tmp_path, "csv", f"data.csv={table}")
    clips, classes = sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert classes == ["x", "y"]
    assert all(Path(c["path"]).is_file() for c in clips)  # resolved against the CSV's folder
    frame = prepare(prepare_settings(cfg))
    assert frame.set_index(frame["path"].map(lambda p: Path(p).stem))["split"].to_dict() == {
        "a1": "train", "a2": "train", "b1": "val", "b2": "val", "c1": "test", "c2": "test"}
    assert list(manifest(cfg)["fold"]) == ["1", "1", "2", "2", "3", "3"]


def test_csv_without_split_gets_a_grouped_split_from_the_regex(tmp_path):
    rows = []
    for label in ("x", "y"):
        for speaker in range(6):
            name = f"{label}/{speaker}-take.wav"
            wav(tmp_path / "d" / name)
            rows.append({"path": name, "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "d" / "list.csv", index=False)
    cfg = config(tmp_path, "csv", f"data.csv={tmp_path / 'd' / 'list.csv'}", "data.group_regex='^(\\d+)-'")
    frame = prepare(prepare_settings(cfg))
    assert set(frame["group"]) == {str(k) for k in range(6)}
    assert_groups_in_one_split(frame)
