"""The default model over 3 seeds on the demo data and on FSDD's official split, with confidence intervals.

    .venv/bin/python benchmarks/seeds.py --fsdd-root ../free-spoken-digit-dataset
    .venv/bin/python benchmarks/seeds.py --datasets demo --max-epochs 10

Each dataset is one `trainer.seeds=[0,1,2]` experiment (audiocnn.experiment.run_repeats):
one training + evaluation per seed, all children of one MLflow parent run that gets the
mean, std and min. Per seed the evaluate stage's bootstrap 95% interval of the test
accuracy (1000 resamples of the test clips) is kept too: it measures the uncertainty
from the finite test set, the std over seeds the uncertainty from training.
Writes benchmarks/results/seeds.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import benchmark_config, dataset_overrides, machine

from audiocnn.experiment import job_of, run_repeats
from audiocnn.repeats import variant_config, variants

RESULTS = Path(__file__).parent / "results" / "seeds.json"


def table(results: dict) -> str:
    lines = ["| data | test clips | accuracy, mean ± std over seeds | per seed: accuracy [bootstrap 95% CI] | "
             "balanced accuracy | macro-F1 | ECE |", "|---|---|---|---|---|---|---|"]
    for dataset, r in results.items():
        seeds = "; ".join(f"{s['seed']}: {s['accuracy']:.3f} [{s['ci95']['low']:.3f}, {s['ci95']['high']:.3f}]"
                          for s in r["seeds"])
        lines.append(f"| {dataset} | {r['n_clips']} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | {seeds} | "
                     f"{r['balanced_accuracy']:.3f} ± {r['balanced_accuracy_std']:.3f} | "
                     f"{r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f} | {r['ece']:.3f} ± {r['ece_std']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["demo", "fsdd"], choices=["demo", "fsdd"])
    parser.add_argument("--fsdd-root", type=Path, default=Path("../free-spoken-digit-dataset"))
    parser.add_argument("--seeds", default="[0,1,2]")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--work", type=Path, default=Path("data/benchmarks/seeds"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = json.loads(RESULTS.read_text())["results"] if RESULTS.exists() else {}
    for dataset in args.datasets:
        work = args.work / dataset
        cfg = benchmark_config(work, *dataset_overrides(dataset, args.fsdd_root), f"trainer.seeds={args.seeds}",
                               f"trainer.max_epochs={args.max_epochs}", "tracking.log_model=false",
                               f"paths.models={work}/models", f"paths.metrics={work}/metrics", *args.override)
        aggregate = run_repeats(job_of(cfg), run_name_suffix="seeds")
        per_seed = []
        for variant in variants(cfg):
            metrics = json.loads((Path(variant_config(cfg, variant).paths.metrics) / "test.json").read_text())
            per_seed.append({"seed": variant.seed, "accuracy": metrics["accuracy"], "ci95": metrics["accuracy_ci95"],
                             "n_clips": metrics["n_clips"]})
        results[dataset] = {**{k: v for k, v in aggregate.items() if k != "runs"}, "n_clips": per_seed[0]["n_clips"],
                            "seeds": per_seed, "max_epochs": args.max_epochs, "overrides": args.override}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(f"\nmachine: {machine()}\n")
    print(table(results))


if __name__ == "__main__":
    main()
