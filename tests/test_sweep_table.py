"""The sweep callback (parent run, nesting, ranked table), on a real SQLite store (fast; sweeps end to end:
test_sweeps.py)."""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from omegaconf import OmegaConf

from audiocnn import tracking
from audiocnn.sweep import STATE_FILE, SweepParentRun, format_table, ranked_jobs
from tests.conftest import tiny_config


def test_jobs_rank_by_validation_accuracy_and_repeated_jobs_by_their_mean(tmp_path):
    cfg = tiny_config(tmp_path)
    tracking.configure(tracking.store_of(cfg.tracking))
    parent = tracking.start_parent_run(tracking.store_of(cfg.tracking), "sweep-demo-test")
    for overrides, val_acc in (("optimizer.lr=0.1", 0.5), ("optimizer.lr=0.01", 0.75)):
        with tracking.open_run(tracking.store_of(cfg.tracking), run_name=overrides, tags={"hydra.overrides": overrides}, parent_run_id=parent):
            mlflow.log_metrics({"best_val_acc": val_acc, "test_accuracy": val_acc - 0.1})
    # A job that repeats seeds is a parent of its own; it ranks by its runs' mean.
    repeated = tracking.start_parent_run(tracking.store_of(cfg.tracking), "seeds", {"hydra.overrides": "trainer.seeds=[0,1]"}, parent_run_id=parent)
    for val_acc in (0.8, 1.0):
        with tracking.open_run(tracking.store_of(cfg.tracking), run_name="seed", parent_run_id=repeated):
            mlflow.log_metric("best_val_acc", val_acc)
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="broken", tags={"hydra.overrides": "model.dropout=2"}, parent_run_id=parent):
        pass  # no metric: ranks last
    client = MlflowClient(tracking_uri=tracking.anchored(cfg.tracking.uri))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    jobs = ranked_jobs(client, experiment, parent)
    assert [job["overrides"] for job in jobs] == ["trainer.seeds=[0,1]", "optimizer.lr=0.01", "optimizer.lr=0.1",
                                                  "model.dropout=2"]
    assert jobs[0]["val_acc"] == 0.9 and jobs[-1]["val_acc"] is None
    lines = format_table(jobs).splitlines()
    assert lines[0] == "| rank | overrides | val acc | test acc | status | run id |"
    assert lines[3].startswith("| 2 | optimizer.lr=0.01 | 0.7500 | 0.6500 | FINISHED |")
    assert lines[5].startswith("| 4 | model.dropout=2 | - | - |")


def sweep_config(root: Path, task: list[str]):
    """A job config plus the `hydra` node Hydra hands `on_multirun_start` / `on_multirun_end`."""
    hydra = {"overrides": {"task": task, "hydra": ["hydra/launcher=basic"]},
             "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
             "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
             "sweep": {"dir": str(root / "multirun"), "subdir": "0"}}
    return OmegaConf.create({**OmegaConf.to_container(tiny_config(root)), "hydra": hydra})


def test_sweep_callback_records_its_parent_run_for_the_jobs_ranks_and_ends(tmp_path, monkeypatch, capsys):
    """`SweepParentRun.on_multirun_start` creates the parent run and records its id in
    `<hydra.sweep.dir>/sweep.json` before any job starts, where a job reads it (`sweep.parent_run_id`) and
    opens its run as a child of it; `on_multirun_end` ranks the jobs, logs the table, ends the parent
    FINISHED. Nothing goes through the process environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # read as the sweep's process starts
    environment = dict(os.environ)
    task = ["optimizer.lr=0.1,0.01"]
    config = sweep_config(tmp_path, task)
    (tmp_path / "multirun").mkdir()
    callback = SweepParentRun()
    try:
        callback.on_multirun_start(config)
        parent = json.loads((tmp_path / "multirun" / STATE_FILE).read_text())["parent_run_id"]
        assert parent and parent == callback.run_id, "the parent run id is not recorded for the jobs"
        client = MlflowClient(tracking_uri=tracking.anchored(config.tracking.uri))
        run = client.get_run(parent)
        assert run.info.status == "RUNNING"
        assert run.data.tags["sweep"] == "true" and run.data.tags["hydra.overrides"] == " ".join(task)
        assert run.data.tags["hydra.sweeper"] == "BasicSweeper" and run.data.tags["hydra.launcher"] == "BasicLauncher"

        jobs = {}
        for overrides, val_acc in (("optimizer.lr=0.1", 0.5), ("optimizer.lr=0.01", 0.75)):
            job_cfg = tiny_config(tmp_path, overrides)
            with tracking.open_run(tracking.store_of(job_cfg.tracking), run_name=overrides, tags={"hydra.overrides": overrides},
                                   parent_run_id=parent) as job:
                mlflow.log_metrics({"best_val_acc": val_acc, "test_accuracy": val_acc - 0.1})
            jobs[overrides] = job.info.run_id
            assert client.get_run(job.info.run_id).data.tags["mlflow.parentRunId"] == parent

        callback.on_multirun_end(config)
    finally:
        atexit.unregister(callback._end)
    # none of audiocnn's own state in the environment (MLflow's settings aside: set_tracking_uri exports the URI)
    assert {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} == {
        k: v for k, v in environment.items() if not k.startswith("MLFLOW_")}
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_val_acc"] == 0.75 and run.data.metrics["test_accuracy"] == 0.65
    assert run.data.tags["best_run_id"] == jobs["optimizer.lr=0.01"]
    table = (tmp_path / "multirun" / "sweep_results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert rows[0].startswith("| 1 | optimizer.lr=0.01 | 0.7500 | 0.6500 | FINISHED | " + jobs["optimizer.lr=0.01"])
    assert rows[1].startswith("| 2 | optimizer.lr=0.1 | 0.5000 |")
    assert Path(client.download_artifacts(parent, "sweep_results.md", str(tmp_path))).read_text() == table
    assert f"sweep: MLflow parent run {parent}" in capsys.readouterr().out
