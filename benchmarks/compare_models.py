"""Compare models on the demo data: overall test accuracy and accuracy on the order-only classes.

    .venv/bin/python benchmarks/compare_models.py                      # cnn vs crnn_gru, seeds 0 1 2
    .venv/bin/python benchmarks/compare_models.py --models cnn crnn_gru crnn_lstm --seeds 0

Every run is the real pipeline (prepare, featurize, train, evaluate) with the default
config plus `model=<name> seed=<seed>`, tracked in MLflow like any other run. Writes
benchmarks/results/compare_models.json and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import benchmark_config, machine, train_and_evaluate

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.data.prepare import prepare
from audiocnn.data.sources.demo import ORDER_ONLY_CLASSES
from audiocnn.features.featurize import featurize

RESULTS = Path(__file__).parent / "results" / "compare_models.json"


def run_one(model: str, seed: int, work: Path) -> dict:
    out = work / f"{model}-seed{seed}"
    cfg = benchmark_config(work, f"model={model}", f"seed={seed}", f"paths.models={out}/model",
                           f"paths.metrics={out}/metrics")
    result = train_and_evaluate(cfg, run_name_suffix=f"seed={seed}")
    order = [result["metrics"]["per_class_recall"][c] for c in ORDER_ONLY_CLASSES]
    return {"model": model, "seed": seed, "order_only_accuracy": sum(order) / len(order),
            **{k: v for k, v in result.items() if k != "metrics"}}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs: list[dict]) -> str:
    lines = ["| model | parameters | test accuracy | order-only classes accuracy | macro-F1 | epochs |",
             "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in runs):
        rows = [r for r in runs if r["model"] == model]
        lines.append(
            f"| {model} | {rows[0]['n_parameters']:,} | {mean_std([r['accuracy'] for r in rows])} | "
            f"{mean_std([r['order_only_accuracy'] for r in rows])} | {mean_std([r['macro_f1'] for r in rows])} | "
            f"{statistics.mean(r['epochs'] for r in rows):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn", "crnn_gru"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("data/benchmarks/compare_models"))
    args = parser.parse_args()
    cfg = benchmark_config(args.work)
    prepare(prepare_settings(cfg))  # regenerated every time: the demo is deterministic, so this is cheap and never stale
    featurize(store_settings(cfg))
    runs = [run_one(model, seed, args.work) for model in args.models for seed in args.seeds]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "order_only_classes": list(ORDER_ONLY_CLASSES),
                                   "runs": runs}, indent=2) + "\n")
    print(f"\nmachine: {machine()}; seeds {args.seeds}; mean ± std over seeds\n")
    print(table(runs))


if __name__ == "__main__":
    main()
