"""Training in several processes (Lightning DDP): which process this is, and who reads which clips.

Lightning starts the other processes of `trainer.devices=N` itself by running the same
command again with `LOCAL_RANK` set (`python pipelines/train.py --params params.yaml`);
torchrun sets `RANK`/`LOCAL_RANK`/`GROUP_RANK`, SLURM (`srun`) `SLURM_PROCID`, and a node
of a multi-node Lightning launch `NODE_RANK`. Every process runs the same fits (the
collectives must match); only the main one (global rank 0) opens MLflow runs, writes
`model.pt`/`run.json`, evaluates, and makes missing inputs (the others wait for them).

The loaders split the data themselves (`Trainer(use_distributed_sampler=False)`): in
training each process takes `len // world` clips of one shared shuffled order per epoch
(`DistributedSampler(drop_last=True)`: no clip twice, the same number of optimizer steps
everywhere); in validation process r takes clips r, r + world, ... (every clip exactly
once, no padding), and the metrics are torchmetrics states summed over the processes.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from torch.utils.data import DistributedSampler, Sampler

from audiocnn.errors import EmptySplitError, MissingInputError

# set by torchrun (RANK, LOCAL_RANK, GROUP_RANK), Lightning's launcher (LOCAL_RANK, NODE_RANK), SLURM (SLURM_PROCID)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
WAIT_MESSAGE_S = 60.0


def is_main_process() -> bool:
    """True unless a launcher says this process is not global rank 0 (one process: always true)."""
    for variable in RANK_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value.isdigit() and int(value) != 0:
            return False
    return True


def rank_label() -> str:
    """`RANK=1` / `LOCAL_RANK=1`: which variable makes this a worker process, for messages."""
    return next((f"{v}={os.environ[v]}" for v in RANK_VARIABLES if os.environ.get(v, "0").strip() not in ("", "0")),
                "rank 0")


def wait_for(ready: Callable[[], bool], what: str, timeout_s: float = 6 * 3600, poll_s: float = 2.0) -> None:
    """A worker process waits for the main one to make `what` (torchrun/SLURM start all processes at once)."""
    start, said = time.monotonic(), None
    while not ready():
        now = time.monotonic()
        if now - start > timeout_s:
            raise MissingInputError(f"{rank_label()}: {what} not ready after {timeout_s:.0f} s; run the prepare and "
                                    "featurize stages first (`dvc repro featurize`)")
        if said is None or now - said >= WAIT_MESSAGE_S:
            print(f"train: {rank_label()}: waiting for the main process to make {what}")
            said = now
        time.sleep(poll_s)


def check_enough(n: int, world: int) -> None:
    """Refuse a train split of `n` clips that leaves one of `world` processes without a clip."""
    if n < world:
        raise EmptySplitError(f"the train split has {n} clip(s), fewer than the {world} training processes "
                              "(trainer.devices x trainer.num_nodes); each needs at least one")


def train_sampler(n: int, rank: int, world: int, seed: int) -> DistributedSampler:
    """This process's share of one shuffled order per epoch (Lightning calls `set_epoch`); `n // world` clips."""
    check_enough(n, world)
    return DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)


class StridedSampler(Sampler[int]):
    """Clips rank, rank + world, ...: every clip of a split in exactly one process, none repeated."""

    def __init__(self, n: int, rank: int, world: int, split: str = "val"):
        if n < world:
            raise EmptySplitError(f"the {split} split has {n} clip(s), fewer than the {world} training processes "
                                  "(trainer.devices x trainer.num_nodes); each needs at least one")
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's `GPU available: ...` lines (a Trainer built only to read its plan)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
