"""Multi-label data: a `labels` column in data=csv, the FSD50K adapter on a fixture laid out like
the real dataset, the synthetic demo_mix, grouped multi-label splits, and hostile label lists
(empty, outside the vocabulary, the separator inside a name, 10,000 labels). Real WAVs in
tmp_path and the real prepare stage throughout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings
from audiocnn.config import compose_config
from audiocnn.data import sources
from audiocnn.data.prepare import MULTICLASS, MULTILABEL, prepare, read_classes, read_manifest
from audiocnn.data.sources.demo_mix import CLASSES as MIX_CLASSES
from audiocnn.data.sources.demo_mix import generate_mixtures
from audiocnn.data.splits import grouped_multilabel_split
from audiocnn.errors import ConfigError, MissingInputError
from audiocnn.features.budget import MAX_CLASSES
from tests.conftest import TINY

RNG = np.random.default_rng(0)


def wav(path: Path, seconds: float = 0.2, sr: int = 8000) -> Path:
    """`seconds` of quiet noise, different in every file (never silent, never a duplicate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, RNG.uniform(-0.3, 0.3, int(seconds * sr)).astype(np.float32), sr)
    return path


def remove_piece(target: Path) -> None:
    """Take a file, or a flat folder with its files, out of a dataset fixture."""
    if target.is_dir():
        for file in target.iterdir():
            file.unlink()
        target.rmdir()
    else:
        target.unlink()


def config(out: Path, name: str, *overrides: str):
    paths = [f"paths.{key}={out / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    tiny = [o for o in TINY if not o.startswith("data.")]
    return compose_config([f"data={name}", *tiny, *paths, f"tracking.uri=sqlite:///{out / 'mlflow.db'}", *overrides])


def report(cfg) -> dict:
    return json.loads((Path(cfg.paths.prepared) / "report.json").read_text())


LABEL_SETS = ["dog", "dog;siren", "siren", "car;dog", "car", "car;siren;dog", "siren;car", "dog"]


def labelled_csv(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """A data=csv listing `path,labels` of real WAVs (a path of None is written as a blank cell)."""
    table = tmp_path / "data" / "list.csv"
    for name, _ in rows:
        if name:
            wav(tmp_path / "data" / name)
    pd.DataFrame([{"path": n, "labels": labels} for n, labels in rows]).to_csv(table, index=False)
    return table


def test_csv_labels_column_gives_a_multilabel_manifest_and_nothing_is_lost(tmp_path):
    rows = [(f"clip{i:02d}.wav", LABEL_SETS[i % len(LABEL_SETS)]) for i in range(40)]
    rows += [("empty.wav", " ; "), ("blank.wav", "")]  # an empty label list, two spellings
    cfg = config(tmp_path / "out", "csv", f"data.csv={labelled_csv(tmp_path, rows)}")
    frame = prepare(prepare_settings(cfg))
    assert read_classes(cfg.paths.prepared) == (["car", "dog", "siren"], MULTILABEL)
    assert json.loads((Path(cfg.paths.prepared) / "classes.json").read_text()) == \
        {"task": "multilabel", "classes": ["car", "dog", "siren"]}
    manifest = read_manifest(cfg.paths.prepared)
    assert list(manifest.columns) == ["path", "label", "labels", "split", "fold", "group", "duration", "sr"]
    by_name = {Path(p).name: labels for p, labels in zip(manifest["path"], manifest["labels"])}
    assert by_name["clip05.wav"] == "car;dog;siren"  # class order, whatever the CSV's order
    assert by_name["clip06.wav"] == "car;siren"
    assert (manifest["label"] == manifest["labels"].str.split(";").str[0]).all()
    assert set(manifest["split"]) == {"train", "val", "test"} and len(frame) == 40
    skipped = report(cfg)
    assert skipped["task"] == "multilabel" and skipped["kept"] + skipped["skipped"] == len(rows)
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped["skipped_files"]}
    assert reasons["empty.wav"].startswith("empty label list") and reasons["blank.wav"].startswith("empty label list")


def test_a_label_outside_data_classes_skips_its_clip_with_the_label_named(tmp_path):
    rows = [(f"clip{i:02d}.wav", LABEL_SETS[i % len(LABEL_SETS)]) for i in range(40)] + [("odd.wav", "dog;cat")]
    cfg = config(tmp_path / "out", "csv", f"data.csv={labelled_csv(tmp_path, rows)}", "data.classes=[car,dog,siren]")
    prepare(prepare_settings(cfg))
    reasons = {Path(s["path"]).name: s["reason"] for s in report(cfg)["skipped_files"]}
    assert reasons == {"odd.wav": "label not in the class list: 'cat'"}


def test_single_label_csv_keeps_its_plain_classes_json(tmp_path):
    rows = [(f"clip{i:02d}.wav", ["a", "b"][i % 2]) for i in range(20)]
    table = tmp_path / "list.csv"
    for name, _ in rows:
        wav(tmp_path / name)
    pd.DataFrame({"path": [n for n, _ in rows], "label": [lab for _, lab in rows]}).to_csv(table, index=False)
    cfg = config(tmp_path / "out", "csv", f"data.csv={table}")
    prepare(prepare_settings(cfg))
    assert json.loads((Path(cfg.paths.prepared) / "classes.json").read_text()) == ["a", "b"]
    assert read_classes(cfg.paths.prepared) == (["a", "b"], MULTICLASS)
    assert "labels" not in read_manifest(cfg.paths.prepared).columns and "task" not in report(cfg)


def test_csv_with_both_label_columns_is_refused_in_one_line(tmp_path):
    table = tmp_path / "list.csv"
    pd.DataFrame({"path": ["a.wav"], "label": ["dog"], "labels": ["dog;car"]}).to_csv(table, index=False)
    cfg = config(tmp_path / "out", "csv", f"data.csv={table}")
    with pytest.raises(ConfigError, match=r"both a label and a labels column; keep one") as error:
        sources.collect(prepare_settings(cfg).data, Path(cfg.paths.raw))
    assert "\n" not in str(error.value)


def test_the_separator_inside_a_class_name_is_refused_naming_the_setting(tmp_path):
    rows = [("a.wav", "dog"), ("b.wav", "car")]
    cfg = config(tmp_path / "out", "csv", f"data.csv={labelled_csv(tmp_path, rows)}", "data.classes=['car;van',dog]")
    with pytest.raises(ConfigError, match=r"^data.classes: class 'car;van' \(#0\) holds ';', the separator") as error:
        prepare(prepare_settings(cfg))
    assert "\n" not in str(error.value)


def test_ten_thousand_labels_are_refused_before_any_file_is_read(tmp_path):
    """Through the prepare stage DVC and `run_experiment` call (the class ceiling passed down)."""
    from audiocnn.stages import prepare_stage

    count = 10_000
    assert count > MAX_CLASSES
    table = tmp_path / "many.csv"  # the files are never opened: the class list is refused first
    pd.DataFrame({"path": [f"missing{i}.wav" for i in range(count)],
                  "labels": [f"label{i}" for i in range(count)]}).to_csv(table, index=False)
    cfg = config(tmp_path / "out", "csv", f"data.csv={table}")
    with pytest.raises(ConfigError, match=rf"^data=csv: classes: 10,000 class names; at most {MAX_CLASSES:,}; "
                                          r"keep fewer classes with data.classes$"):
        prepare_stage(cfg)
    assert not (Path(cfg.paths.prepared) / "manifest.csv").exists()


def test_grouped_multilabel_split_keeps_groups_whole_covers_every_label_and_is_seeded():
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d", "rare"]
    lists = [sorted(rng.choice(names[:4], size=rng.integers(1, 4), replace=False).tolist()) for _ in range(300)]
    for i in range(0, 300, 30):  # 10 clips hold the rare label
        lists[i] = lists[i] + ["rare"]
    label_lists = pd.Series(lists)
    groups = pd.Series([f"g{i // 3}" for i in range(300)])  # 100 groups of 3 clips
    split = grouped_multilabel_split(label_lists, groups, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert (pd.DataFrame({"g": groups, "s": split}).groupby("g")["s"].nunique() == 1).all()
    for name in ("train", "val", "test"):
        held = {label for row in label_lists[split == name] for label in row}
        assert held == set(names), name
    shares = split.value_counts(normalize=True)
    assert 0.6 <= shares["train"] <= 0.8 and 0.08 <= shares["test"] <= 0.22
    assert split.equals(grouped_multilabel_split(label_lists, groups, val_fraction=0.15, test_fraction=0.15, seed=0))


def test_ten_thousand_labels_split_without_a_groups_by_labels_matrix():
    """Without the class ceiling (prepare's classes_problem), 10,000 labels still split: the counts
    are sparse (10,000 x 10,000 dense counts would be 800 MB)."""
    count = 10_000
    label_lists = pd.Series([[f"label{i}", "common"] for i in range(count)])
    split = grouped_multilabel_split(label_lists, pd.Series([f"g{i}" for i in range(count)]), val_fraction=0.15,
                                     test_fraction=0.15, seed=0)
    assert split.value_counts().to_dict() == {"train": 7000, "val": 1500, "test": 1500}


def test_val_groups_and_duplicate_files_work_on_multilabel_data(tmp_path):
    rows = [(f"s{i % 6}_clip{i:02d}.wav", LABEL_SETS[i % len(LABEL_SETS)]) for i in range(36)]
    table = labelled_csv(tmp_path, rows)
    copy = tmp_path / "data" / "copy_of_clip00.wav"
    copy.write_bytes((tmp_path / "data" / rows[0][0]).read_bytes())  # the same recording under another group
    pd.concat([pd.read_csv(table), pd.DataFrame({"path": [copy.name], "labels": ["dog"]})]).to_csv(table, index=False)
    cfg = config(tmp_path / "out", "csv", f"data.csv={table}", "data.group_regex='^(?P<group>s\\d)_'",
                 "data.val_groups=[s1]")
    frame = prepare(prepare_settings(cfg))
    assert set(frame.loc[frame["split"] == "val", "group"]) == {"s1"}
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    both = frame[frame["path"].str.endswith((rows[0][0], copy.name))]
    assert len(both) == 2 and both["split"].nunique() == 1


def test_a_fold_as_test_split_on_multilabel_data(tmp_path):
    rows = [(f"clip{i:02d}.wav", LABEL_SETS[i % len(LABEL_SETS)]) for i in range(48)]
    table = labelled_csv(tmp_path, rows)
    pd.read_csv(table).assign(fold=[str(i % 4) for i in range(48)]).to_csv(table, index=False)
    cfg = config(tmp_path / "out", "csv", f"data.csv={table}", "data.fold=2")
    frame = prepare(prepare_settings(cfg))
    assert set(frame.loc[frame["split"] == "test", "fold"]) == {"2"} and (frame["fold"] == "2").sum() == 12
    assert set(frame.loc[frame["fold"] != "2", "split"]) == {"train", "val"}


# ---------------------------------------------------------------- FSD50K

VOCABULARY = [(0, "Bark", "/m/05tny_"), (1, "Dog", "/m/0bt9lr"), (2, "Siren", "/m/03kmc9"), (3, "Car", "/m/0k4j")]


def fsd50k_fixture(root: Path, vocabulary=VOCABULARY) -> Path:
    """FSD50K.ground_truth/{dev,eval,vocabulary}.csv + FSD50K.{dev,eval}_audio/<fname>.wav."""
    mids = {label: mid for _, label, mid in vocabulary}
    label_sets = ["Bark,Dog", "Siren", "Car,Siren", "Dog"]
    dev = [(100 + i, label_sets[i % 4], "val" if i % 5 == 0 else "train") for i in range(20)]
    dev += [(900, "Bark,Kazoo", "train"), (901, "", "train")]  # a label outside the vocabulary, no label
    evaluation = [(500 + i, label_sets[i % 4], None) for i in range(8)]
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True)
    for name, rows, folder in (("dev", dev, "FSD50K.dev_audio"), ("eval", evaluation, "FSD50K.eval_audio")):
        table = pd.DataFrame([{"fname": f, "labels": labels,
                               "mids": ",".join(mids.get(x, "/m/unknown") for x in labels.split(",") if x),
                               **({"split": split} if name == "dev" else {})} for f, labels, split in rows])
        table.to_csv(truth / f"{name}.csv", index=False)  # pandas quotes the comma-separated cells, as FSD50K does
        for fname, _, _ in rows:
            wav(root / folder / f"{fname}.wav", sr=44100, seconds=0.1)
    pd.DataFrame(vocabulary).to_csv(truth / "vocabulary.csv", header=False, index=False)
    return root


def test_fsd50k_fixture_through_prepare(tmp_path):
    root = fsd50k_fixture(tmp_path / "FSD50K")
    assert '"Bark,Dog"' in (root / "FSD50K.ground_truth" / "dev.csv").read_text()  # the real quoting
    cfg = config(tmp_path / "out", "fsd50k", f"data.root={root}")
    frame = prepare(prepare_settings(cfg))
    assert read_classes(cfg.paths.prepared) == (["Bark", "Dog", "Siren", "Car"], MULTILABEL)
    manifest = read_manifest(cfg.paths.prepared).set_index(read_manifest(cfg.paths.prepared)["path"].map(lambda p: Path(p).name))
    assert manifest.loc["100.wav", ["labels", "split"]].tolist() == ["Bark;Dog", "val"]
    assert manifest.loc["103.wav", ["labels", "split"]].tolist() == ["Dog", "train"]
    assert manifest.loc["102.wav", "labels"] == "Siren;Car"  # vocabulary order
    assert set(manifest.loc[[f"{500 + i}.wav" for i in range(8)], "split"]) == {"test"}
    assert frame["split"].value_counts().to_dict() == {"train": 16, "test": 8, "val": 4}
    skipped = {Path(s["path"]).name: s["reason"] for s in report(cfg)["skipped_files"]}
    assert skipped == {"900.wav": "label not in the class list: 'Kazoo'",
                       "901.wav": "empty label list: the clip has no label"}


@pytest.mark.parametrize("piece", ["FSD50K.eval_audio", "FSD50K.ground_truth/vocabulary.csv"])
def test_fsd50k_names_the_missing_piece_in_one_line(tmp_path, piece):
    root = fsd50k_fixture(tmp_path / "FSD50K")
    remove_piece(root / piece)
    cfg = config(tmp_path / "out", "fsd50k", f"data.root={root}")
    with pytest.raises(MissingInputError, match=rf"^data.root={root}: no {piece}; extract FSD50K") as error:
        prepare(prepare_settings(cfg))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, separator", [("Rodents, rats", "','"), ("Rock;roll", "';'")])
def test_fsd50k_vocabulary_name_holding_a_separator_is_refused(tmp_path, name, separator):
    root = fsd50k_fixture(tmp_path / "FSD50K", VOCABULARY + [(4, name, "/m/odd")])
    cfg = config(tmp_path / "out", "fsd50k", f"data.root={root}")
    with pytest.raises(ConfigError, match=rf"vocabulary.csv: class '{name}' \(#4\) holds {separator}, the separator"):
        prepare(prepare_settings(cfg))


# ---------------------------------------------------------------- demo_mix

def test_demo_mix_is_deterministic_and_holds_one_to_three_distinct_sources(tmp_path):
    first = generate_mixtures(tmp_path / "a", clips=6, progress=False)
    second = generate_mixtures(tmp_path / "b", clips=3, progress=False)  # clip i does not depend on the count
    for one, other in zip(first, second):
        assert Path(one["path"]).read_bytes() == Path(other["path"]).read_bytes() and one["labels"] == other["labels"]
    for clip in first:
        assert 1 <= len(clip["labels"]) <= 3 and len(set(clip["labels"])) == len(clip["labels"])
        assert set(clip["labels"]) <= set(MIX_CLASSES)
        audio, sr = sf.read(clip["path"])
        assert sr == 16000 and 3.0 <= len(audio) / sr <= 4.0 and np.abs(audio).max() > 0.05
    assert generate_mixtures(tmp_path / "c", seed=1, clips=1, progress=False)[0]["labels"] != [] and \
        Path(first[0]["path"]).read_bytes() != (tmp_path / "c" / "mix_00000.wav").read_bytes()


def test_demo_mix_through_prepare(tmp_path):
    cfg = config(tmp_path / "out", "demo_mix", "data.clips=30")
    frame = prepare(prepare_settings(cfg))
    assert read_classes(cfg.paths.prepared) == (list(MIX_CLASSES), MULTILABEL)
    manifest = read_manifest(cfg.paths.prepared)
    assert len(frame) == 30 and set(manifest["split"]) == {"train", "val", "test"}
    assert manifest["labels"].str.split(";").map(len).between(1, 3).all()
