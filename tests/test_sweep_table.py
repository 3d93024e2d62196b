"""The sweep callback's ranked table, on a real SQLite store (fast; sweeps end to end: test_sweeps.py)."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from audiocnn import tracking
from audiocnn.sweep import format_table, ranked_jobs
from tests.conftest import tiny_config


def test_jobs_rank_by_validation_accuracy_and_repeated_jobs_by_their_mean(tmp_path):
    cfg = tiny_config(tmp_path)
    tracking.configure(cfg)
    parent = tracking.start_parent_run(cfg, "sweep-demo-test")
    with tracking.children_of(parent):
        for overrides, val_acc in (("optimizer.lr=0.1", 0.5), ("optimizer.lr=0.01", 0.75)):
            with tracking.open_run(cfg, run_name=overrides, tags={"hydra.overrides": overrides}):
                mlflow.log_metrics({"best_val_acc": val_acc, "test_accuracy": val_acc - 0.1})
        # A job that repeats seeds is a parent of its own; it ranks by its runs' mean.
        repeated = tracking.start_parent_run(cfg, "seeds", {"hydra.overrides": "trainer.seeds=[0,1]"})
        with tracking.children_of(repeated):
            for val_acc in (0.8, 1.0):
                with tracking.open_run(cfg, run_name="seed"):
                    mlflow.log_metric("best_val_acc", val_acc)
        with tracking.open_run(cfg, run_name="broken", tags={"hydra.overrides": "model.dropout=2"}):
            pass  # no metric: ranks last
    client = MlflowClient(tracking_uri=tracking.tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    jobs = ranked_jobs(client, experiment, parent)
    assert [job["overrides"] for job in jobs] == ["trainer.seeds=[0,1]", "optimizer.lr=0.01", "optimizer.lr=0.1",
                                                  "model.dropout=2"]
    assert jobs[0]["val_acc"] == 0.9 and jobs[-1]["val_acc"] is None
    lines = format_table(jobs).splitlines()
    assert lines[0] == "| rank | overrides | val acc | test acc | status | run id |"
    assert lines[3].startswith("| 2 | optimizer.lr=0.01 | 0.7500 | 0.6500 | FINISHED |")
    assert lines[5].startswith("| 4 | model.dropout=2 | - | - |")
