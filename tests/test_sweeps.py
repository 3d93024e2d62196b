"""Hydra sweeps end to end: grid, Optuna and joblib-parallel sweeps, each job an MLflow child run
of one parent run per sweep, with the ranked table printed and logged at the end.

Runs `python pipelines/train.py -m ...` in a temporary copy of the project with a tiny demo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.test_e2e import TINY_CONF, copy_project, run

pytestmark = pytest.mark.slow

FAST = ["trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project (6 clips per class) whose inputs are prepared and featurized once by DVC,
    so the sweeps' jobs (parallel ones too) only train and evaluate."""
    root = copy_project(tmp_path_factory.mktemp("sweeps"), {**TINY_CONF, "data/demo.yaml": {"clips_per_class": 6}})
    run(["dvc", "repro", "featurize"], root)
    return root


def sweep_runs(project: Path, overrides: str):
    """(parent run, its child runs) of the sweep launched with `overrides`."""
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("audiocnn")
    parents = client.search_runs([experiment.experiment_id],
                                 filter_string=f"tags.sweep = 'true' and tags.`hydra.overrides` = '{overrides}'")
    assert len(parents) == 1, [p.data.tags for p in parents]
    parent = parents[0]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return client, parent, children


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_grid_sweep_nests_every_job_under_one_parent_and_ranks_them(project):
    overrides = ["model=cnn,crnn_gru", "optimizer.lr=1e-3,3e-4"]
    result = run([sys.executable, "pipelines/train.py", "-m", *overrides, *FAST], project)
    client, parent, children = sweep_runs(project, " ".join([*overrides, *FAST]))

    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    jobs = {c.data.tags["hydra.overrides"] for c in children}
    assert jobs == {f"model={m} optimizer.lr={lr} trainer.max_epochs=1" for m in ("cnn", "crnn_gru")
                    for lr in ("0.001", "0.0003")}
    assert all("test_accuracy" in c.data.metrics for c in children)  # each job evaluated

    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]
    val_accs = [float(row[2]) for row in rows]
    assert val_accs == sorted(val_accs, reverse=True)
    assert {row[5] for row in rows} == {c.info.run_id for c in children}
    assert parent.data.metrics["best_val_acc"] == pytest.approx(val_accs[0], abs=1e-4)
    assert parent.data.tags["best_run_id"] == rows[0][5]
    logged = Path(client.download_artifacts(parent.info.run_id, "sweep_results.md")).read_text()
    assert rows[0][5] in logged and len(table_rows(logged)) == 4


def test_optuna_search_runs_n_trials_and_maximises_val_acc(project):
    overrides = ["hparams_search=optuna", *FAST]
    result = run([sys.executable, "pipelines/train.py", "-m", "hydra.sweeper.n_trials=3", *overrides], project)
    _, parent, children = sweep_runs(project, " ".join(overrides))
    assert "hydra.sweeper.n_trials=3" in parent.data.tags["hydra.hydra_overrides"].split()
    assert parent.data.tags["hydra.sweeper"] == "OptunaSweeper"
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert len(table_rows(result.stdout)) == 3
    for child in children:  # every trial drew the searched settings
        for key in ("model", "optimizer.lr", "model.dropout", "model.blocks.0.channels"):
            assert key + "=" in child.data.tags["hydra.overrides"]
    results = sorted((project / "data/hydra/multirun").glob("*/optimization_results.yaml"))
    best = yaml.safe_load(results[-1].read_text())
    assert best["best_value"] == pytest.approx(max(c.data.metrics["best_val_acc"] for c in children))


def test_joblib_launcher_runs_jobs_in_parallel_processes(project):
    overrides = ["model=cnn", "optimizer.lr=1e-3,3e-4", *FAST]
    run([sys.executable, "pipelines/train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *overrides],
        project)
    _, parent, children = sweep_runs(project, " ".join(overrides))
    assert parent.data.tags["hydra.launcher"] == "JoblibLauncher"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}


def test_seeds_as_a_parallel_multirun_are_aggregated_under_the_sweep_parent(project):
    """`-m seed=0,1` on the joblib launcher: each job prepares its own manifest (its seed), both share the
    feature store, and the sweep's end aggregates them as `trainer.seeds` would (tests/test_sweep_repeats.py)."""
    overrides = ["model=cnn", "seed=0,1", *FAST]
    sweep_dir = project / "data/hydra/multirun/seeds"
    stores = {path: path.stat().st_mtime_ns for path in (project / "data/features").glob("*/store.json")}
    result = run([sys.executable, "pipelines/train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  f"hydra.sweep.dir={sweep_dir}", *overrides], project)
    client, parent, children = sweep_runs(project, " ".join(overrides))
    assert parent.info.status == "FINISHED" and len(children) == 2
    for job in ("0", "1"):
        overrides_of_job = yaml.safe_load((sweep_dir / job / ".hydra/overrides.yaml").read_text())
        seed = next(int(o.split("=")[1]) for o in overrides_of_job if o.startswith("seed="))
        assert json.loads((sweep_dir / job / "prepared/settings.json").read_text())["seed"] == seed
    assert len(stores) == 1 and stores == {path: path.stat().st_mtime_ns for path in stores}  # kept, not rebuilt
    report = json.loads((sweep_dir / "repeats/all/test.json").read_text())
    assert report["n_runs"] == 2 and set(report["runs"]) == {"seed-0", "seed-1"}
    tests = sorted(c.data.metrics["test_accuracy"] for c in children)
    assert sorted(m["accuracy"] for m in report["runs"].values()) == pytest.approx(tests)
    assert parent.data.metrics["repeats/all/test_accuracy"] == pytest.approx(sum(tests) / 2)
    assert "repeats/all/test.json" in {f.path for f in client.list_artifacts(parent.info.run_id, "repeats/all")}
    assert "| 1 | (all jobs) | 2 |" in result.stdout


def test_slurm_launcher_machinery_runs_each_job_as_a_submitit_process(project):
    """hydra/launcher=slurm_local: the submitit machinery of the SLURM launcher, with local processes."""
    overrides = ["model=cnn", "optimizer.lr=1e-3,3e-4", "seed=3", *FAST]  # seed: not the joblib sweep's overrides
    sweep_dir = project / "data/hydra/multirun/submitit"
    run([sys.executable, "pipelines/train.py", "-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep_dir}",
         *overrides], project)
    _, parent, children = sweep_runs(project, " ".join(overrides))
    assert parent.info.status == "FINISHED" and parent.data.tags["hydra.launcher"] == "LocalLauncher"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert all("test_accuracy" in c.data.metrics for c in children)
    logs = sorted(sweep_dir.glob(".submitit/*/*_log.out"))  # one submitit job (a process of its own) per Hydra job
    assert len(logs) == 2 and all("evaluate: test accuracy" in log.read_text() for log in logs), logs
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]


DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_a_sweep_of_ddp_jobs_has_one_folder_and_one_run_per_job_not_per_process(project):
    """Each job trains in 2 gloo processes (the train stage in processes of its own, from which
    Lightning starts the second): one output folder and one MLflow child run per job."""
    overrides = ["model=cnn", "optimizer.lr=1e-3,3e-4", *DDP, *FAST]
    sweep_dir = project / "data/hydra/multirun/ddp"
    runs_dir = project / "data/hydra/runs"
    before = sorted(runs_dir.iterdir()) if runs_dir.exists() else []
    result = run([sys.executable, "pipelines/train.py", "-m", f"hydra.sweep.dir={sweep_dir}", *overrides], project)
    _, parent, children = sweep_runs(project, " ".join(overrides))
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["hydra.overrides"] for c in children} == {
        " ".join(["model=cnn", f"optimizer.lr={lr}", *DDP, *FAST]) for lr in ("0.001", "0.0003")}
    assert all(c.info.run_name.startswith("cnn-demo-lr=") for c in children)
    assert all("test_accuracy" in c.data.metrics for c in children)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    every = client.search_runs([parent.info.experiment_id], filter_string="tags.`hydra.overrides` LIKE '%strategy=ddp%'")
    assert sorted(r.info.run_id for r in every) == sorted([parent.info.run_id, *(c.info.run_id for c in children)])
    assert result.stdout.count("train: process 1 of 2") == 2 and result.stdout.count("train: process 0 of 2") == 2

    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        summary = json.loads((sweep_dir / job / "model/run.json").read_text())
        assert summary["processes"] == 2 and summary["run_id"] in {c.info.run_id for c in children}
        assert (sweep_dir / job / "model/model.pt").exists() and (sweep_dir / job / "metrics/test.json").exists()
    assert not list(project.glob("**/train_ddp_process_*")) and not list(project.glob("**/lightning_logs"))
    assert (sorted(runs_dir.iterdir()) if runs_dir.exists() else []) == before  # no Hydra run folder per process
