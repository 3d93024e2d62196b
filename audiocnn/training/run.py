"""The train stage's MLflow run, which Lightning's MLflow logger owns (`RunLogger`, `run_logger`): it
creates the run (or opens the resumed one) as `fit` sets up and ends it as `fit` returns or raises.
`RunLifecycle` adds the stage's part: a resumed run taken over, `resume.json`, the run's inputs
(`log_run_inputs`), and why a run failed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import lightning as L
import mlflow
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger

from audiocnn import tracking
from audiocnn.tracking import owners
from audiocnn.training import resume


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger, the owner of the train stage's run: it creates the run (or opens the
    resumed one) as Lightning sets up, logs to it, and ends it when Lightning's `fit` or `validate`
    returns (FINISHED: after `AfterFit` has written model.pt and run.json) or raises (FAILED, with why:
    `RunLifecycle`). MLflow's run links printed as a run ends are dropped, as for every run audiocnn ends
    (`tracking.owners.without_run_links`)."""

    @property
    def started(self) -> bool:
        """Whether the run is open: Lightning has the logger create (or open) it as a fit or validate sets up."""
        return self._initialized

    def finalize(self, status: str = "success") -> None:
        with owners.without_run_links():
            super().finalize(status)


def run_logger(store: tracking.Store, run_id: str | None, run_name: str, tags: dict,
               parent_run_id: str | None) -> RunLogger:
    """The logger of the train stage's run in `store`: with `run_id`, that run resumed (`RunLifecycle`
    takes it over); else a new run named `run_name`, created with `tags`, this process as its owner and
    `parent_run_id` as its parent (`tracking.new_run_tags`)."""
    if run_id:
        return RunLogger(experiment_name=store.experiment, tracking_uri=store.uri, run_id=run_id)
    return RunLogger(experiment_name=store.experiment, tracking_uri=store.uri, run_name=run_name,
                     tags=tracking.new_run_tags(tags, parent_run_id))


def log_run_inputs(config: Mapping, prepared: Path, data_name: str, logger: RunLogger, summary_table, transfer
                   ) -> None:
    """Params, model size and summary, transfer report: what a run resumed already has is not logged again."""
    client, run_id = logger.experiment, logger.run_id
    logged = client.get_run(run_id).data
    params = tracking.flatten_config(config)
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items() if k not in logged.params])
    tracking.log_dataset(prepared, data_name, run_id)  # the Dataset column: the manifest, its MD5
    if "n_parameters" not in logged.metrics:
        logger.log_metrics({"n_parameters": summary_table.total_params, "multiply_adds": summary_table.total_macs})
        client.log_text(run_id, summary_table.table(), "model_summary.txt")
        if transfer:
            client.log_dict(run_id, vars(transfer), "transfer.json")


class RunLifecycle(Callback):
    """What the train stage adds to the run Lightning's logger owns (the main process only). As Lightning
    sets up (the logger has created or opened the run): a resumed run is taken over (RUNNING again, owned
    by this process, `tags`, under `parent_run_id`: `tracking.take_over`), `resume.json` names the run
    unless fitting had ended (`resume.record`), and the run's inputs are logged (`log_run_inputs`). When
    anything in Lightning's `fit` or `validate` raises, why (`tracking.record_failure`), before the logger
    marks the run FAILED."""

    def __init__(self, config: Mapping, models: Path, start: resume.Start, tags: dict, parent_run_id: str | None,
                 log_inputs: Callable[[RunLogger], None]):
        self.config, self.models, self.start, self.tags, self.parent_run_id = config, models, start, tags, parent_run_id
        self.log_inputs = log_inputs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if self.start.run_id:
            tracking.take_over(logger.experiment, logger.run_id, self.tags, self.parent_run_id)
        if not self.start.fit_done:
            resume.record(self.config, self.models, logger.run_id)
        self.log_inputs(logger)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.logger.started:  # else Lightning has no run to end
            tracking.record_failure(trainer.logger.experiment, trainer.logger.run_id, exception)
