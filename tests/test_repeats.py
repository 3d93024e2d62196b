"""Folds (`data.fold`, `data.protocol=cv`) and seeds (`trainer.seeds`) under one MLflow parent run."""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.data.settings import DataSettings
from audiocnn.config import ConfigError, compose_config, validate_config
from audiocnn.data.prepare import assign_splits, fold_values
from audiocnn.evaluation.reports import describe_results
from audiocnn.experiment import evaluate_stage, job_of, run_repeats, train_stage
from audiocnn.repeats import variants
from tests.conftest import tiny_config

FSDD = os.environ.get("FSDD_RECORDINGS", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                      "fsdd", "recordings"))


def fsdd_like_frame() -> pd.DataFrame:
    """3 speakers x 2 digits x 12 recordings with FSDD's official split (0-4 test, 5-9 val)."""
    rows = [{"path": f"{d}_{s}_{i}.wav", "label": str(d), "group": s, "fold": s,
             "split": "test" if i < 5 else "val" if i < 10 else "train"}
            for s in ("george", "jackson", "theo") for d in range(2) for i in range(12)]
    return pd.DataFrame(rows)


def test_a_fold_is_the_test_split_and_other_folds_keep_their_official_validation():
    data = DataSettings(**{"name": "fsdd", "fold": "jackson", "val_fraction": 0.15, "test_fraction": 0.15})
    frame = assign_splits(fsdd_like_frame(), data, seed=0)
    assert set(frame.loc[frame["split"] == "test", "group"]) == {"jackson"}
    assert (frame.loc[frame["group"] == "jackson", "split"] == "test").all()
    others = frame[frame["group"] != "jackson"]
    index = others["path"].str.extract(r"_(\d+)\.wav$")[0].astype(int)
    assert (others.loc[(index >= 5) & (index < 10), "split"] == "val").all()
    assert (others.loc[(index < 5) | (index >= 10), "split"] == "train").all()


def test_folds_without_an_official_split_get_a_grouped_validation_share():
    rows = [{"path": f"{f}-{g}-{k}.wav", "label": "ab"[k % 2], "group": f"{f}-{g}", "fold": str(f)}
            for f in (1, 2, 10) for g in range(8) for k in range(4)]
    data = DataSettings(**{"name": "esc50", "fold": 10, "val_fraction": 0.25, "test_fraction": 0.15})
    frame = assign_splits(pd.DataFrame(rows), data, seed=0)
    assert set(frame.loc[frame["split"] == "test", "fold"]) == {"10"}
    assert fold_values(frame) == ["1", "2", "10"]
    assert frame.groupby("group")["split"].nunique().max() == 1, "a group spans two splits"
    val_share = (frame["split"] == "val").sum() / (frame["fold"] != "10").sum()
    assert 0.15 <= val_share <= 0.35


def test_an_unknown_fold_is_refused_naming_the_setting_and_the_folds():
    data = DataSettings(**{"name": "fsdd", "fold": "nobody", "val_fraction": 0.15, "test_fraction": 0.15})
    with pytest.raises(ConfigError, match=r"data.fold=nobody: data=fsdd has folds \['george', 'jackson', 'theo'\]"):
        assign_splits(fsdd_like_frame(), data, seed=0)


@pytest.mark.parametrize("overrides, message", [
    (["data.protocol=loso"], "data.protocol=loso: allowed: 'holdout' or 'cv'"),
    (["trainer.seeds=[0,0]"], "trainer.seeds="),
    (["trainer.seeds=[]"], "trainer.seeds="),
])
def test_bad_repeat_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate_config(tiny_config(tmp_path, *overrides))


def test_cv_on_a_dataset_without_folds_is_refused(tmp_path):
    from audiocnn.data.prepare import prepare

    cfg = tiny_config(tmp_path, "data.protocol=cv")
    prepare(prepare_settings(cfg))
    with pytest.raises(ConfigError, match="data.protocol=cv: data=demo has no folds"):
        variants(cfg)


def _children(cfg, parent_id):
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.search_runs(experiment_names=[cfg.tracking.experiment],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow  # 10-20 s: make test-slow and CI run it (#24: make test at most 12 min)
def test_seeds_run_under_one_parent_run_with_mean_and_std(tmp_path):
    """Through DVC's two stages: train trains every seed, evaluate scores them and aggregates."""
    from audiocnn.data.prepare import prepare
    from audiocnn.features.featurize import featurize

    cfg = tiny_config(tmp_path, "trainer.seeds=[0,1]", "trainer.max_epochs=1")
    prepare(prepare_settings(cfg))  # the stages DVC runs before train
    featurize(store_settings(cfg))
    train_stage(cfg)
    assert not (tmp_path / "metrics" / "test.json").exists()
    aggregate = evaluate_stage(cfg)

    report = json.loads((tmp_path / "metrics" / "test.json").read_text())
    assert report == json.loads(json.dumps(aggregate))
    assert set(report["runs"]) == {"seed-0", "seed-1"}
    accuracies = [report["runs"][label]["accuracy"] for label in ("seed-0", "seed-1")]
    assert report["accuracy"] == pytest.approx(np.mean(accuracies))
    assert report["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    predictions = pd.read_csv(tmp_path / "metrics" / "predictions.csv")
    assert set(predictions["run"]) == {"seed-0", "seed-1"}
    pooled_recall = predictions.assign(hit=predictions.actual == predictions.predicted).groupby("actual").hit.mean()
    assert report["worst_class"]["recall"] == pytest.approx(pooled_recall.min(), abs=1e-4)
    assert report["worst_class"]["name"] in set(pooled_recall[pooled_recall == pooled_recall.min()].index)
    assert describe_results(report).splitlines()[0].startswith(f"test accuracy  {report['accuracy']:.3f} +/- ")
    for figure in ("confusion_matrix.png", "reliability_diagram.png"):
        assert (tmp_path / "metrics" / figure).stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "metrics" / "explain").iterdir()) == ["seed-0", "seed-1"]

    state = json.loads((tmp_path / "models" / "repeats.json").read_text())
    parent = mlflow.MlflowClient(cfg.tracking.uri).get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["test_accuracy"] == pytest.approx(report["accuracy"])
    assert "test_accuracy_std" in parent.data.metrics and "test_accuracy.seed-1" in parent.data.metrics
    children = _children(cfg, parent.info.run_id)
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    assert sorted(children["params.seed"]) == ["0", "1"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FSDD), reason=f"FSDD not found at {FSDD}")
def test_leave_one_speaker_out_on_real_fsdd_recordings(tmp_path):
    """cv over 3 real speakers: each speaker is the test fold once, never in its own training split."""
    root = tmp_path / "fsdd" / "recordings"
    root.mkdir(parents=True)
    for speaker in ("george", "jackson", "theo"):
        for digit in range(3):
            for index in range(12):
                name = f"{digit}_{speaker}_{index}.wav"
                (root / name).symlink_to(os.path.abspath(os.path.join(FSDD, name)))
    paths = [f"paths.{key}={tmp_path / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    cfg = compose_config(["data=fsdd", "features=speech", f"data.root={root.parent}", "data.protocol=cv",
                          "trainer.max_epochs=1", "model=cnn", "features.num_workers=0", "tracking.log_model=false",
                          f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *paths])
    validate_config(cfg)
    aggregate = run_repeats(job_of(cfg))

    assert set(aggregate["runs"]) == {"fold-george", "fold-jackson", "fold-theo"}
    for speaker in ("george", "jackson", "theo"):
        manifest = pd.read_csv(tmp_path / "models" / "prepared" / f"fold-{speaker}" / "manifest.csv")
        assert set(manifest.loc[manifest["split"] == "test", "group"]) == {speaker}
        assert speaker not in set(manifest.loc[manifest["split"] != "test", "group"])
    state = json.loads((tmp_path / "models" / "repeats.json").read_text())
    assert len(_children(cfg, state["parent_run_id"])) == 3
