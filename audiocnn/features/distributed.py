"""Several featurize processes (`torchrun --nproc_per_node=N pipelines/featurize.py`).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them featurize is one process and
every function here is a no-op. The process group uses NCCL when each rank has a GPU,
gloo otherwise (CPU, or tests).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from audiocnn.features.cqt import pick_device


def setup(device_setting: str) -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    backend = "nccl" if pick_device(device_setting).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def device(device_setting: str) -> torch.device:
    """This rank's device: its own GPU (LOCAL_RANK) when on CUDA."""
    chosen = pick_device(device_setting)
    if chosen.type == "cuda" and chosen.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return chosen


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather(items: list) -> list:
    """Every rank's `items`, concatenated, on every rank."""
    if not dist.is_initialized():
        return items
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def teardown() -> None:
    if dist.is_initialized() and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.destroy_process_group()
