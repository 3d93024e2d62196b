"""Folds and seeds as a Hydra multirun (`-m data.fold=a,b seed=0,1`): the jobs that differ only in those are
aggregated as a repeated experiment is, at the sweep's end (`repeats.sweep_groups`, the sweep callback).

Fast: the jobs' outputs are real files written here as `run_experiment` writes them, and the parent run is in a
real SQLite store; the sweep end to end (joblib launcher, real training): tests/test_sweeps.py.
"""

from __future__ import annotations

import atexit
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from audiocnn import tracking
from audiocnn.repeats import job_prepared, sweep_groups, write_aggregate
from audiocnn.sweep import SweepParentRun
from tests.test_sweep_table import sweep_config

CLASSES = ["no", "yes"]


def finished_job(sweep: Path, number: int, overrides: list[str], val: float, hits: list[bool],
                 shared: Path | None = None, evaluated: bool = True, run_id: str | None = None) -> Path:
    """A job folder as `run_experiment` leaves it: Hydra's overrides, `model/run.json`, `metrics/` (test.json,
    predictions.csv: one row of class `yes` per hit or miss, and one right `no`), and its manifest's classes.json."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "model").mkdir()
    (job / "model" / "run.json").write_text(json.dumps({"best_val_acc": val, "run_id": run_id or f"run-{number}"}))
    prepared = job_prepared(job, overrides, shared or sweep / "shared")
    prepared.mkdir(parents=True, exist_ok=True)
    (prepared / "classes.json").write_text(json.dumps(CLASSES))
    if evaluated:
        (job / "metrics" / "explain").mkdir(parents=True)
        (job / "metrics" / "explain" / "saliency.png").write_bytes(b"png")
        pd.DataFrame({"path": [f"clip{i}.wav" for i in range(len(hits) + 1)], "actual": ["yes"] * len(hits) + ["no"],
                      "predicted": ["yes" if hit else "no" for hit in hits] + ["no"], "confidence": 0.9}
                     ).to_csv(job / "metrics" / "predictions.csv", index=False)
        (job / "metrics" / "test.json").write_text(json.dumps({"accuracy": float(np.mean([*hits, True])),
                                                               "n": len(hits) + 1}))
    return job


@pytest.mark.parametrize("overrides, own", [
    (["seed=1"], True), (["data.fold=3"], True), (["+data.fold=3"], True), (["data=esc50"], True),
    (["data.val_groups=2", "model=cnn"], True), (["model=cnn", "optimizer.lr=0.1"], False), ([], False),
])
def test_a_job_that_changes_the_split_prepares_its_own_manifest(tmp_path, overrides, own):
    """Else jobs side by side (a parallel launcher) would rewrite one `paths.prepared` under each other."""
    assert job_prepared(tmp_path / "3", overrides, tmp_path / "shared") == (
        tmp_path / "3" / "prepared" if own else tmp_path / "shared")


def test_jobs_that_differ_in_fold_and_seed_group_by_their_other_overrides(tmp_path):
    sweep = tmp_path / "multirun"
    number = 0
    for model in ("cnn", "vgg"):
        for fold in ("a", "b"):
            for seed in (0, 1):
                overrides = [f"model={model}", f"data.fold={fold}", f"seed={seed}", "trainer.max_epochs=1"]
                hits = [True] * (2 + seed) + [fold == "a"] + [model == "cnn"]
                finished_job(sweep, number, overrides, val=0.5 + 0.1 * seed, hits=hits,
                             evaluated=(model, fold, seed) != ("vgg", "b", 1))
                number += 1
    finished_job(sweep, number, ["model=cnn", "data.fold=c", "seed=0"], val=1.0, hits=[True],
                 run_id="run-of-an-earlier-sweep-into-this-folder")
    groups = sweep_groups(sweep, tmp_path / "shared", {f"run-{n}" for n in range(number)})

    assert set(groups) == {"model=cnn", "model=vgg"}  # trainer.max_epochs=1 is every job's: not a setting
    cnn = groups["model=cnn"]
    assert [run.label for run in cnn] == ["fold-a-seed-0", "fold-a-seed-1", "fold-b-seed-0", "fold-b-seed-1"]
    assert [run.metrics["best_val_acc"] for run in cnn] == pytest.approx([0.5, 0.6, 0.5, 0.6])
    assert cnn[2].metrics["accuracy"] == pytest.approx(4 / 5)
    assert cnn[0].prepared == sweep / "0" / "prepared"  # seed and fold: its own manifest
    # the job that failed before its evaluation is left out; the rest of its group is aggregated
    assert [run.label for run in groups["model=vgg"]] == ["fold-a-seed-0", "fold-a-seed-1", "fold-b-seed-0"]

    out = tmp_path / "aggregate"
    aggregate = write_aggregate(cnn, out, "cnn on demo", calibration_bins=5)
    accuracies = [run.metrics["accuracy"] for run in cnn]
    assert aggregate["n_runs"] == 4 and aggregate["accuracy"] == pytest.approx(np.mean(accuracies))
    assert aggregate["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert aggregate["accuracy_min"] == pytest.approx(min(accuracies))
    assert json.loads((out / "test.json").read_text()) == json.loads(json.dumps(aggregate))
    pooled = pd.read_csv(out / "predictions.csv")
    assert len(pooled) == sum(len(pd.read_csv(run.folder / "predictions.csv")) for run in cnn)
    assert set(pooled["run"]) == {run.label for run in cnn}
    assert aggregate["worst_class"]["name"] == "yes"
    yes = pooled[pooled.actual == "yes"]
    assert aggregate["worst_class"]["recall"] == pytest.approx((yes.actual == yes.predicted).mean(), abs=1e-4)
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "explain").iterdir()) == [run.label for run in cnn]


def test_multilabel_runs_aggregate_their_metrics_without_pooling_label_sets_as_classes(tmp_path):
    """Multi-label (and event) runs' predictions.csv holds label sets (`a;b`): they are not pooled as single
    labels; their metrics are aggregated."""
    sweep = tmp_path / "multirun"
    for number, seed in enumerate((0, 1)):
        job = finished_job(sweep, number, [f"seed={seed}"], val=0.5, hits=[True])
        (job / "prepared" / "classes.json").write_text(json.dumps({"task": "multilabel", "classes": ["a", "b"]}))
        pd.DataFrame({"path": ["x.wav"], "actual": ["a;b"], "predicted": ["a"], "top": ["a"], "confidence": [0.9]}
                     ).to_csv(job / "metrics" / "predictions.csv", index=False)
        (job / "metrics" / "test.json").write_text(json.dumps({"task": "multilabel", "map": 0.5 + 0.25 * seed}))
    (runs,) = sweep_groups(sweep, tmp_path / "shared", {"run-0", "run-1"}).values()
    aggregate = write_aggregate(runs, tmp_path / "out", "crnn_gru on demo_mix", calibration_bins=5)
    assert aggregate["map"] == pytest.approx(0.625) and aggregate["map_std"] == pytest.approx(0.25 / 2 ** 0.5)
    assert "worst_class" not in aggregate and not (tmp_path / "out" / "per_class.json").exists()
    assert json.loads((tmp_path / "out" / "test.json").read_text())["runs"]["seed-1"]["map"] == 0.75


def test_a_sweep_that_repeats_neither_folds_nor_seeds_has_no_groups(tmp_path):
    sweep = tmp_path / "multirun"
    for number, lr in enumerate(("0.1", "0.01")):
        finished_job(sweep, number, [f"optimizer.lr={lr}", "seed=3"], val=0.5, hits=[True, False])
    assert sweep_groups(sweep, tmp_path / "shared", {"run-0", "run-1"}) == {}


def test_the_same_fold_and_seed_twice_is_one_run_and_a_fold_named_like_a_path_stays_inside(tmp_path):
    sweep = tmp_path / "multirun"
    for number, fold in enumerate(("/../../escape", "b", "b")):
        finished_job(sweep, number, [f"data.fold={fold}"], val=0.5, hits=[True, number == 1])
    (runs,) = sweep_groups(sweep, tmp_path / "shared", {"run-0", "run-1", "run-2"}).values()
    assert [run.label for run in runs] == ["fold-escape", "fold-b"]
    write_aggregate(runs, tmp_path / "out", "cnn on demo", calibration_bins=5)
    assert (tmp_path / "out" / "explain" / "fold-escape" / "saliency.png").is_file()
    assert not (tmp_path / "escape").exists()


def sweep_end(tmp_path: Path, key: str, values: tuple[str, str]) -> tuple[Path, MlflowClient, str]:
    """A sweep `-m <key>=<values> seed=0,1` through the real callback: its start, four finished jobs (children
    of its parent run; the second value's jobs score better), its end. Returns (sweep dir, client, parent)."""
    config = sweep_config(tmp_path, [f"{key}={','.join(values)}", "seed=0,1"])
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    callback = SweepParentRun()
    try:
        callback.on_multirun_start(config)
        for number, (value, seed) in enumerate((v, s) for v in values for s in (0, 1)):
            with tracking.open_run(tracking.store_of(config.tracking), run_name=f"job-{number}",
                                   parent_run_id=callback.run_id) as child:
                pass
            better = value == values[1]
            finished_job(sweep, number, [f"{key}={value}", f"seed={seed}"], val=0.9 if better else 0.6,
                         hits=[True, seed == 1, better], shared=Path(config.paths.prepared), run_id=child.info.run_id)
        parent = callback.run_id
        callback.on_multirun_end(config)
    finally:
        atexit.unregister(callback._end)
    return sweep, MlflowClient(tracking_uri=tracking.anchored(config.tracking.uri)), parent


def test_the_sweep_end_logs_each_repeated_setting_under_the_parent_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep, client, parent = sweep_end(tmp_path, "model", ("cnn", "vgg"))
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    vgg = json.loads((sweep / "repeats" / "model_vgg" / "test.json").read_text())
    assert vgg["n_runs"] == 2 and vgg["accuracy"] == pytest.approx(np.mean([3 / 4, 1.0]))
    assert run.data.metrics["repeats/model_vgg/test_accuracy"] == pytest.approx(vgg["accuracy"])
    assert run.data.metrics["repeats/model_vgg/test_accuracy_std"] == pytest.approx(vgg["accuracy_std"])
    assert run.data.metrics["repeats/model_cnn/test_accuracy.seed-1"] == pytest.approx(3 / 4)
    logged = {f.path for f in client.list_artifacts(parent, "repeats/model_cnn")}
    assert {"repeats/model_cnn/test.json", "repeats/model_cnn/predictions.csv"} <= logged
    table = (sweep / "repeats_results.md").read_text()
    assert table.splitlines()[2].startswith("| 1 | model=vgg | 2 | 0.9000 | accuracy 0.8750 +/- 0.1768 | 0.7500 |")
    assert table.splitlines()[3].startswith("| 2 | model=cnn | 2 | 0.6000 |")
    assert Path(client.download_artifacts(parent, "repeats_results.md", str(tmp_path))).read_text() == table
    assert "sweep: 2 settings repeated over data.fold / seed" in capsys.readouterr().out


def test_a_setting_named_like_a_path_stays_in_the_sweep_folder_and_makes_valid_metric_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep, client, parent = sweep_end(tmp_path, "tracking.run_name", ("'/../../../evil x'", "'..'"))
    folders = sorted(p.name for p in (sweep / "repeats").iterdir())
    assert len(folders) == 2 and all((sweep / "repeats" / name / "test.json").is_file() for name in folders)
    assert not any(any(folder.glob("evil*")) for folder in (sweep / "repeats").parents[:5])  # where ../ leads
    keys = [k for k in client.get_run(parent).data.metrics if k.startswith("repeats/")]
    assert {k.split("/")[1] for k in keys} == set(folders)
