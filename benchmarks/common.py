"""Helpers shared by the benchmark scripts: the machine's description and one tracked run."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from audiocnn.config import compose_config, validate_config
from audiocnn.evaluation.evaluate import evaluate
from audiocnn.training.train import train


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {torch.get_num_threads()} CPU threads, {gpu}, torch {torch.__version__}"


def benchmark_config(work: Path, *overrides: str):
    """The default config plus `overrides`, every path under `work` (the DVC outputs in data/ stay)."""
    paths = [f"paths.{key}={work / key}" for key in ("raw", "prepared", "features")]
    cfg = compose_config([*paths, "tracking.experiment=audiocnn-benchmarks", *overrides])
    validate_config(cfg)
    return cfg


def train_and_evaluate(cfg, run_name_suffix: str) -> dict:
    """Train then evaluate `cfg` (a real tracked run); returns its numbers and timings."""
    started = time.perf_counter()
    summary = train(cfg, run_name_suffix=run_name_suffix)
    seconds = time.perf_counter() - started
    metrics = evaluate(cfg)
    epochs = summary["epochs"]  # epochs completed (Lightning's current_epoch after fit)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "metrics": metrics,
            "epochs": epochs, "train_seconds": round(seconds, 1),
            "seconds_per_epoch": round(seconds / epochs, 2), "n_parameters": summary["n_parameters"],
            "multiply_adds": summary["multiply_adds"]}
