"""Test helpers for tests/test_resume.py: Lightning callbacks that slow or break a training.

`Pace` is named in a config (`+trainer.callbacks.pace._target_=tests.pace.Pace`) so that a
training subprocess lasts long enough to be killed mid-run; it changes no number.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class Pace(Callback):
    """Sleep `seconds` after every training batch."""

    def __init__(self, seconds: float = 0.1):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


class Crash(Callback):
    """Raise `RuntimeError` when epoch `epoch` + 1 (0-based) starts: after epoch `epoch`'s checkpoints."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch + 1:
            raise RuntimeError(f"crash after epoch {self.epoch + 1}")
