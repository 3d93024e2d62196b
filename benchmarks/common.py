"""Helpers shared by the benchmark scripts: the machine's description and one tracked run."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from audiocnn import atomic
from audiocnn.config import compose_config, validate_config
from audiocnn.experiment import ensure_inputs, evaluate_model, train_model, job_of


def commit() -> str:
    """The checkout's commit, `+changes` when tracked files differ from it (the figures' provenance)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "audiocnn", "conf", "benchmarks"], cwd=repo).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}{'+changes' if dirty else ''}"


COMMIT = commit()  # taken when the benchmark starts: the code it imported, whatever HEAD is later


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {torch.get_num_threads()} CPU threads, {gpu}, torch {torch.__version__}, "
            f"{COMMIT}")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: timings on a busy machine are not comparable."""
    return [round(x, 2) for x in os.getloadavg()]


def save_results(path: Path, result: dict) -> None:
    """Stamp `load_average_after` and write `result` to `path` atomically."""
    result["load_average_after"] = load_average()
    atomic.write_json(path, result)


def dataset_overrides(dataset: str, fsdd_root: Path) -> list[str]:
    """Config overrides for a benchmark dataset: the demo, or FSDD at `fsdd_root`."""
    if dataset == "fsdd":
        return ["data=fsdd", f"data.root={fsdd_root.resolve()}", "features=speech"]
    return ["data=demo"]


def benchmark_config(work: Path, *overrides: str):
    """The default config plus `overrides`, every path under `work` (the DVC outputs in data/ stay)."""
    paths = [f"paths.{key}={work / key}" for key in ("raw", "prepared", "features")]
    cfg = compose_config([*paths, "tracking.experiment=audiocnn-benchmarks", *overrides])
    validate_config(cfg)
    return cfg


def train_and_evaluate(cfg, run_name_suffix: str) -> dict:
    """Train then evaluate `cfg` (a real tracked run); returns its numbers and timings."""
    job = job_of(cfg)
    ensure_inputs(job.settings)
    started = time.perf_counter()
    summary = train_model(job, run_name_suffix=run_name_suffix)
    seconds = time.perf_counter() - started
    metrics = evaluate_model(job)
    epochs = summary["epochs"]  # epochs completed (Lightning's current_epoch after fit)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "metrics": metrics,
            "epochs": epochs, "train_seconds": round(seconds, 1),
            "seconds_per_epoch": round(seconds / epochs, 2), "n_parameters": summary["n_parameters"],
            "multiply_adds": summary["multiply_adds"]}
