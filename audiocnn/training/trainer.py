"""The Lightning Trainer the train stage fits with: where and in how many processes (`processes`,
`planned_processes`), its checkpoints and callbacks (`build_trainer`), the best weights' validation by
a Trainer of its own (`validate_best`) and Stochastic Weight Averaging's average (`swa_average`)."""

from __future__ import annotations

from pathlib import Path
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, StochasticWeightAveraging

from audiocnn.training import distributed
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.optim import resolve_precision
from audiocnn.training.resume import LAST, AtomicCheckpointIO, RngState, TrainMetricsFirst
from audiocnn.training.run import RunLogger
from audiocnn.training.settings import TrainerSettings


def processes(trainer: TrainerSettings) -> dict:
    """Where and how many processes Lightning trains with (`trainer.accelerator/devices/strategy/num_nodes`)."""
    return {"accelerator": trainer.accelerator, "devices": trainer.devices, "strategy": trainer.strategy,
            "num_nodes": trainer.num_nodes}


def planned_processes(trainer: TrainerSettings) -> int:
    """How many processes `trainer` trains in (devices x nodes, as Lightning resolves them), starting none."""
    with distributed.quiet_lightning():
        trainer = L.Trainer(**processes(trainer), logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
    return trainer.world_size


def build_trainer(settings: TrainerSettings, out: Path, logger: RunLogger | None, callbacks: tuple[Callback, ...] = ()
                  ) -> tuple[L.Trainer, ModelCheckpoint]:
    """Lightning Trainer of the `trainer` group `settings`, with `trainer.callbacks` (instantiated from
    conf/), the train stage's own `callbacks`, and the best checkpoint on val_loss kept as `out/best.ckpt`
    (the stage's own output, so not configurable).
    `logger`: the run's (`run_logger`); None in the processes that do not log (DDP rank > 0).
    The loaders split the data across processes themselves (`use_distributed_sampler=False`). The state
    after each epoch is kept as `out/last.ckpt` (with the generators' state) to resume from, written
    after the epoch's train metrics are logged (`resume.TrainMetricsFirst`); writes are atomic."""
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                                 enable_version_counter=False)
    # Not the best checkpoint's `save_last=True`: that writes last.ckpt as validation ends, before the
    # epoch's train metrics are logged. `trainer.fit(ckpt_path="last")` finds this one.
    last = ModelCheckpoint(dirpath=out, filename=Path(LAST).stem, monitor=None, save_top_k=1, every_n_epochs=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
    configured = [instantiate(spec) for spec in settings.callbacks.values() if spec]
    trainer = L.Trainer(
        **processes(settings), max_epochs=settings.max_epochs,
        precision=resolve_precision(settings.precision, settings.accelerator),
        gradient_clip_val=settings.gradient_clip_val, deterministic=settings.deterministic,
        log_every_n_steps=settings.log_every_n_steps, default_root_dir=out,
        callbacks=[*configured, *callbacks, RngState(), TrainMetricsFirst(), checkpoint, last],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        logger=logger or False,
    )
    return trainer, checkpoint


def validate_best(settings: TrainerSettings, module: L.LightningModule, data: WindowDataModule) -> dict:
    """The validation figures of `module` as it is now (the best checkpoint's weights, or SWA's average), by
    a Trainer of its own without logger or callbacks: the fit's Trainer is still inside `fit` when
    `AfterFit` asks (a Trainer runs one entry point at a time). Every process calls it (collective)."""
    with distributed.quiet_lightning():
        trainer = L.Trainer(**processes(settings), deterministic=settings.deterministic,
                            precision=resolve_precision(settings.precision, settings.accelerator),
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, use_distributed_sampler=False)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}


def swa_average(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """With `trainer.callbacks.swa` (conf/trainer/callbacks/swa.yaml): put SWA's average into `module` and
    return True, so the stage keeps it instead of best.ckpt; False without the callback or when training
    stopped (early) before averaging began. Lightning moves the average in itself (and recomputes BatchNorm
    statistics) only when training reaches max_epochs; after an early stop the parameters are moved here."""
    swa = next((c for c in trainer.callbacks if isinstance(c, StochasticWeightAveraging)), None)
    if swa is None:
        return False
    averaged = int(swa.n_averaged) if swa.n_averaged is not None else 0
    if averaged == 0 or swa._average_model is None:
        print("train: trainer.callbacks.swa: training stopped before swa_epoch_start; keeping the best checkpoint")
        return False
    swa.transfer_weights(swa._average_model, module)
    print(f"train: trainer.callbacks.swa: keeping the average of {averaged} epochs' weights (not best.ckpt)")
    return True
