"""Every model on the demo data and on FSDD: parameters, multiply-adds, time per epoch, accuracy.

    .venv/bin/python benchmarks/model_zoo.py --fsdd-root ../free-spoken-digit-dataset
    .venv/bin/python benchmarks/model_zoo.py --models cnn vgg --datasets demo --max-epochs 10

Each cell is the real pipeline (prepare, featurize, train with early stopping, evaluate)
on the dataset's official or default split, tracked in MLflow. FSDD uses the speech
front-end (`features=speech`: 8 kHz, 16 ms hop, 1 s windows). Time per epoch is the
training stage's wall time (train + validation passes) divided by the epochs run, on
this machine. Writes benchmarks/results/model_zoo.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import benchmark_config, dataset_overrides, machine, train_and_evaluate

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.config import config_groups
from audiocnn.data.prepare import prepare
from audiocnn.features.featurize import featurize

RESULTS = Path(__file__).parent / "results" / "model_zoo.json"


def human(count: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return str(int(count))


def table(runs: list[dict], datasets: list[str]) -> str:
    header = "| model | " + " | ".join(
        f"{d}: params | {d}: multiply-adds | {d}: s/epoch | {d}: epochs | {d}: test accuracy" for d in datasets)
    lines = [header + " |", "|---" * (1 + 5 * len(datasets)) + "|"]
    for model in dict.fromkeys(r["model"] for r in runs):
        cells = []
        for dataset in datasets:
            row = next((r for r in runs if r["model"] == model and r["dataset"] == dataset), None)
            cells += ([f"{row['n_parameters']:,}", human(row["multiply_adds"]), f"{row['seconds_per_epoch']:.1f}",
                       str(row["epochs"]), f"{row['accuracy']:.3f}"] if row else ["—"] * 5)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=config_groups()["model"])
    parser.add_argument("--datasets", nargs="+", default=["demo", "fsdd"], choices=["demo", "fsdd"])
    parser.add_argument("--fsdd-root", type=Path, default=Path("../free-spoken-digit-dataset"))
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("data/benchmarks/model_zoo"))
    args = parser.parse_args()
    runs = []
    for dataset in args.datasets:
        work = args.work / dataset
        base = [*dataset_overrides(dataset, args.fsdd_root), f"trainer.max_epochs={args.max_epochs}"]
        cfg = benchmark_config(work, *base)
        prepare(prepare_settings(cfg))
        featurize(store_settings(cfg))
        for model in args.models:
            out = work / model
            cfg = benchmark_config(work, *base, f"model={model}", f"paths.models={out}/model",
                                   f"paths.metrics={out}/metrics")
            result = train_and_evaluate(cfg, run_name_suffix="zoo")
            runs.append({"model": model, "dataset": dataset, **{k: v for k, v in result.items() if k != "metrics"},
                         "per_class_recall": result["metrics"]["per_class_recall"]})
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({"machine": machine(), "max_epochs": args.max_epochs, "runs": runs},
                                          indent=2) + "\n")
    print(f"\nmachine: {machine()}; at most {args.max_epochs} epochs, early stopping on validation loss\n")
    print(table(runs, args.datasets))


if __name__ == "__main__":
    main()
