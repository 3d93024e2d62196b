"""One MLflow parent run per Hydra multirun sweep, and a ranked table of its jobs at the end.

Configured in conf/config.yaml (`hydra.callbacks.sweep_parent_run`). At the start of a
`-m` sweep (grid, Optuna, any launcher) it creates the parent run and records it in
`<hydra.sweep.dir>/sweep.json` before any job starts; each job reads it there (`parent_run_id`,
called by `audiocnn.experiment.run_experiment`, in whatever process or host the launcher runs
it) and opens its run as a child of it. At the end it ranks the children by validation
accuracy, prints the table, logs it to the parent run (`sweep_results.md`,
`sweep_results.json`) and ends the parent. The same sweep rerun into the same folder
(`hydra.sweep.dir=...`, after a kill) reopens the parent `sweep.json` names, and each job
resumes or skips its training there (`audiocnn.experiment.run_experiment`). Like every run, the parent records its
owning process (`audiocnn.tracking.owners`), so one whose process died is marked KILLED.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from omegaconf import DictConfig

from audiocnn import atomic, repeats, tracking
from audiocnn.config import user_tracking_uri, with_tracking_uri
from audiocnn.data.names import slug_map
from audiocnn.errors import ConfigError
from audiocnn.tracking import names, owners

RANK_METRIC = "best_val_acc"
# a run's validation accuracy, mAP on multi-label data, or frame F1 on event data (training.events)
RANK_METRICS = (RANK_METRIC, "best_val_map", "best_val_frame_f1")
STATE_FILE = "sweep.json"  # in hydra.sweep.dir: the parent run, for a rerun into the same folder


def parent_run_id() -> str | None:
    """In a job of a multirun sweep: the parent run its callback recorded in `<hydra.sweep.dir>/sweep.json`
    (None outside a sweep, or when the sweep has none: no `hydra.callbacks.sweep_parent_run`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    try:
        return json.loads((Path(HydraConfig.get().sweep.dir) / STATE_FILE).read_text())["parent_run_id"]
    except (OSError, ValueError, KeyError):
        return None


def children(client: MlflowClient, experiment_id: str, run_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                              max_results=10000)


def validation_accuracy(client: MlflowClient, experiment_id: str, run) -> float | None:
    """A job's `best_val_acc` (`best_val_map` on multi-label data, `best_val_frame_f1` on event data); for a job that repeats folds/seeds
    (audiocnn/repeats.py: a parent run of its own), the mean over its runs."""
    def score(metrics: dict) -> float | None:
        return next((metrics[key] for key in RANK_METRICS if key in metrics), None)

    if score(run.data.metrics) is not None:
        return score(run.data.metrics)
    values = [v for r in children(client, experiment_id, run.info.run_id) if (v := score(r.data.metrics)) is not None]
    return sum(values) / len(values) if values else None


def ranked_jobs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[dict]:
    """The parent's child runs, best validation accuracy first (runs without one last)."""
    jobs = [{
        "overrides": run.data.tags.get("hydra.overrides", run.info.run_name),
        "val_acc": validation_accuracy(client, experiment_id, run),
        "test_acc": run.data.metrics.get("test_accuracy"),
        "status": run.info.status,
        "run_id": run.info.run_id,
    } for run in children(client, experiment_id, parent_run_id)]
    return sorted(jobs, key=lambda job: (job["val_acc"] is None, -(job["val_acc"] or 0.0)))


def format_table(jobs: list[dict]) -> str:
    """Markdown table: rank | overrides | val acc | test acc | status | run id."""
    def number(value):
        return "-" if value is None else f"{value:.4f}"

    lines = ["| rank | overrides | val acc | test acc | status | run id |", "|---|---|---|---|---|---|"]
    lines += [f"| {rank} | {job['overrides'] or '(defaults)'} | {number(job['val_acc'])} | "
              f"{number(job['test_acc'])} | {job['status']} | {job['run_id']} |"
              for rank, job in enumerate(jobs, start=1)]
    return "\n".join(lines)


def repeats_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of (setting, `repeats.aggregate_metrics`) rows, best mean validation score first:
    rank | setting | runs | val score | test score mean +/- std | test score min."""
    lines = ["| rank | setting | runs | val score | test score | test min |", "|---|---|---|---|---|---|"]
    for rank, (setting, aggregate) in enumerate(sorted(rows, key=lambda row: -row[1]["best_val_acc"]), 1):
        test = next((key for key in repeats.TEST_SCORES if key in aggregate), None)
        shown = (f"{test} {aggregate[test]:.4f} +/- {aggregate[test + '_std']:.4f} | {aggregate[test + '_min']:.4f}"
                 if test else "- | -")
        lines.append(f"| {rank} | {setting} | {aggregate['n_runs']} | {aggregate['best_val_acc']:.4f} | {shown} |")
    return "\n".join(lines)


class SweepParentRun(Callback):
    """Hydra callback: parent MLflow run for a multirun sweep (see the module docstring)."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        with_tracking_uri(config, user_tracking_uri())  # this runs as the sweep's process starts
        try:
            uri = tracking.configure(tracking.store_of(config.tracking))
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        import mlflow

        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = mlflow.get_experiment_by_name(config.tracking.experiment).experiment_id
        overrides = names.redact_overrides(config.hydra.overrides.task)
        if self._resume(config, overrides, uri):
            return
        tags = {**owners.owner_tags(), **tracking.source_tags(), "data": config.data.name, "sweep": "true",
                "hydra.overrides": overrides,
                "hydra.hydra_overrides": names.redact_overrides(config.hydra.overrides.hydra),
                "hydra.sweeper": config.hydra.sweeper._target_.rsplit(".", 1)[-1],
                "hydra.launcher": config.hydra.launcher._target_.rsplit(".", 1)[-1]}
        name = f"sweep-{config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        atexit.register(self._end, "FAILED")  # a sweep that dies before on_multirun_end
        print(f"sweep: MLflow parent run {self.run_id} ({name}) in {tracking.redact(uri)}"
              + (f"; in the UI: {url}" if (url := tracking.ui_url(uri, self.experiment_id, self.run_id)) else ""))
        atomic.write_json(Path(config.hydra.sweep.dir) / STATE_FILE, {"parent_run_id": self.run_id,
                                                                      "overrides": overrides})

    def _resume(self, config: DictConfig, overrides: str, uri: str) -> bool:
        """Reopen the parent run `sweep.json` names for the same overrides (not with trainer.resume=false)."""
        try:
            state = json.loads((Path(config.hydra.sweep.dir) / STATE_FILE).read_text())
        except (OSError, ValueError):
            return False
        if (not config.trainer.get("resume", True) or state.get("overrides") != overrides
                or not tracking.reopen_run(tracking.store_of(config.tracking), state["parent_run_id"])):
            return False
        self.run_id = state["parent_run_id"]
        atexit.register(self._end, "FAILED")
        print(f"sweep: resuming MLflow parent run {self.run_id} in {tracking.redact(uri)}")
        return True

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        jobs = ranked_jobs(self.client, self.experiment_id, self.run_id)
        table = format_table(jobs)
        print(f"sweep: {len(jobs)} jobs, best validation accuracy first\n{table}")
        self.client.log_text(self.run_id, table + "\n", "sweep_results.md")
        self.client.log_dict(self.run_id, jobs, "sweep_results.json")
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            atomic.write_text(sweep_dir / "sweep_results.md", table + "\n")
        best = next((job for job in jobs if job["val_acc"] is not None), None)
        if best:
            self.client.log_metric(self.run_id, RANK_METRIC, best["val_acc"])
            if best["test_acc"] is not None:
                self.client.log_metric(self.run_id, "test_accuracy", best["test_acc"])
            self.client.set_tag(self.run_id, "best_run_id", best["run_id"])
        if sweep_dir.is_dir():
            self._aggregate_repeats(config, sweep_dir, {job["run_id"] for job in jobs})
        self._end("FINISHED")  # the table says which jobs failed

    def _aggregate_repeats(self, config: DictConfig, sweep_dir: Path, run_ids: set[str]) -> None:
        """A sweep over `data.fold` / `seed`: each group of jobs that differ only in those
        (`repeats.sweep_groups`) aggregated as a repeated experiment is, into `<sweep dir>/repeats/<group>/`
        and the parent run (metrics `repeats/<group>/test_<key>`, files under `repeats/<group>/`); the
        groups ranked by mean validation score in `repeats_results.md`."""
        groups = repeats.sweep_groups(sweep_dir, Path(config.paths.prepared), run_ids)
        slugs = slug_map([setting or "all" for setting in groups], "setting")
        rows = []
        for setting, results in groups.items():
            slug = slugs[setting or "all"]
            out = sweep_dir / "repeats" / slug
            aggregate = repeats.write_aggregate(results, out, f"{setting or config.model.name} on {config.data.name}",
                                                config.evaluate.calibration_bins)
            repeats.log_aggregate(self.client, self.run_id, out, aggregate, prefix=f"repeats/{slug}/",
                                  artifact_path=f"repeats/{slug}")
            rows.append((setting or "(all jobs)", aggregate))
        if rows:
            table = repeats_table(rows)
            print(f"sweep: {len(rows)} settings repeated over data.fold / seed, best mean validation score first\n"
                  f"{table}")
            self.client.log_text(self.run_id, table + "\n", "repeats_results.md")
            atomic.write_text(sweep_dir / "repeats_results.md", table + "\n")

    def _end(self, status: str) -> None:
        if self.run_id is None:
            return
        with owners.without_run_links():
            self.client.set_terminated(self.run_id, status)
        self.run_id = None
