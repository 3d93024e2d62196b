"""`data.val_groups`: validation is whole groups (speakers) the training never sees, like the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings
from audiocnn.data.settings import DataSettings
from audiocnn.config import compose_config
from audiocnn.data.prepare import assign_splits, prepare
from audiocnn.errors import ConfigError

SPEAKERS = [f"s{i}" for i in range(6)]


def fsdd_like() -> pd.DataFrame:
    """6 speakers x 3 labels x 4 takes; the fold is the speaker; take 0 test, 1 val, 2-3 train (FSDD-like)."""
    rows = [{"path": f"{lab}_{spk}_{take}.wav", "label": lab, "group": spk, "fold": spk,
             "split": ["test", "val", "train", "train"][take]}
            for spk in SPEAKERS for lab in "abc" for take in range(4)]
    return pd.DataFrame(rows)


def splits(frame: pd.DataFrame, seed: int = 0, **data) -> pd.DataFrame:
    cfg = DataSettings(**{"name": "fsdd", "val_fraction": 0.2, "test_fraction": 0.2, "fold": None,
                            "val_groups": None, **data})
    return assign_splits(frame.copy(), cfg, seed)


def groups_of(frame: pd.DataFrame, split: str) -> set[str]:
    return set(frame.loc[frame["split"] == split, "group"])


def test_a_number_of_val_groups_under_a_fold_holds_out_that_many_other_speakers_whole():
    frame = splits(fsdd_like(), fold="s0", val_groups=2)
    val = groups_of(frame, "val")
    assert len(val) == 2 and "s0" not in val
    # every clip of the chosen speakers validates; none of them trains or tests
    assert frame.loc[frame["group"].isin(val), "split"].eq("val").all()
    assert not val & (groups_of(frame, "train") | groups_of(frame, "test"))
    assert groups_of(frame, "test") == {"s0"} and frame.loc[frame["group"] == "s0", "split"].eq("test").all()
    assert groups_of(frame, "train") == set(SPEAKERS) - {"s0"} - val  # the others' takes 1-3 all train
    assert (frame["split"] == "train").sum() == 3 * 3 * 4


def test_the_drawn_val_groups_are_seeded_and_never_the_test_fold():
    picks = [frozenset(groups_of(splits(fsdd_like(), seed=seed, fold="s2", val_groups=1), "val"))
             for seed in range(12)]
    assert picks[3] == frozenset(groups_of(splits(fsdd_like(), seed=3, fold="s2", val_groups=1), "val"))
    assert len(set(picks)) > 1 and all("s2" not in p for p in picks)


def test_named_val_groups_are_exactly_those_groups():
    frame = splits(fsdd_like(), fold="s0", val_groups=["s4", "s1"])
    assert groups_of(frame, "val") == {"s1", "s4"}
    assert set(frame.loc[frame["split"] == "val", "path"]) == set(fsdd_like().query("group in ['s1', 's4']")["path"])


def test_without_a_given_split_the_test_split_is_made_from_the_other_groups():
    frame = fsdd_like().drop(columns=["split", "fold"])
    frame["group"] = frame["group"] + "-" + frame["label"]  # 18 groups
    out = splits(frame, val_groups=["s0-a", "s3-b"])
    assert groups_of(out, "val") == {"s0-a", "s3-b"}
    assert groups_of(out, "test") and not groups_of(out, "test") & groups_of(out, "train")
    assert not groups_of(out, "val") & (groups_of(out, "test") | groups_of(out, "train"))


@pytest.mark.parametrize("data, message", [
    ({"fold": "s0", "val_groups": ["s0"]},
     "data.val_groups=['s0']: group 's0' has clips in the test split (data.fold=s0)"),
    ({"fold": "s0", "val_groups": ["s1", "nobody"]}, "data.val_groups=['s1', 'nobody']: unknown group 'nobody'"),
    ({"fold": "s0", "val_groups": 5}, "data.val_groups=5: only 5 groups have no clip in the test split"),
    ({"val_groups": 1}, "data.val_groups=1: only 0 groups have no clip in the test split (data=fsdd's own split)"),
])
def test_a_val_group_that_cannot_work_is_refused_in_one_line(data, message):
    with pytest.raises(ConfigError) as error:
        splits(fsdd_like(), **data)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def _fixtures(root) -> str:
    """Real WAV files of 4 speakers x 2 labels x 3 takes, listed in a CSV with the speaker as group and fold."""
    rng = np.random.default_rng(0)
    lines = ["path,label,fold,group"]
    for speaker in ("ann", "bob", "cid", "dee"):
        for label in ("yes", "no"):
            for take in range(3):
                name = f"{speaker}_{label}_{take}.wav"
                sf.write(root / name, rng.uniform(-0.3, 0.3, 4000).astype(np.float32), 16000, subtype="PCM_16")
                lines.append(f"{name},{label},{speaker},{speaker}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return str(root / "list.csv")


def _cfg(tmp_path, *overrides):
    paths = [f"paths.{key}={tmp_path / key}" for key in ("raw", "prepared")]
    return compose_config(["data=csv", f"data.csv={_fixtures(tmp_path)}", *paths, *overrides])


def test_prepare_writes_the_val_groups_into_the_manifest(tmp_path):
    frame = prepare(prepare_settings(_cfg(tmp_path, "data.fold=ann", "data.val_groups=[cid]")))
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    assert manifest["split"].tolist() == frame["split"].tolist()
    by_speaker = manifest.assign(speaker=[Path(p).name.split("_")[0] for p in manifest["path"]]).groupby("speaker")["split"]
    assert by_speaker.unique().map(list).to_dict() == {"ann": ["test"], "bob": ["train"], "cid": ["val"],
                                                       "dee": ["train"]}
    assert (manifest["split"] == "val").sum() == 6


def test_prepare_refuses_an_unknown_val_group_before_writing_a_manifest(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.val_groups=\['eve'\]: unknown group 'eve'; the groups are ann, bob"):
        prepare(prepare_settings(_cfg(tmp_path, "data.fold=ann", "data.val_groups=[eve]")))
    assert not (tmp_path / "prepared" / "manifest.csv").exists()
