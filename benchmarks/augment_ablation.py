"""Augmentation ablation on FSDD, leave-one-speaker-out: does each augmentation help unseen speakers?

    .venv/bin/python benchmarks/augment_ablation.py --fsdd-root ../shared/data/fsdd
    .venv/bin/python benchmarks/augment_ablation.py --configs none pitch_shift --folds theo   # a probe

For every augment config (`conf/augment/<name>.yaml`, or a `+`-joined list such as
`specaugment+pitch_shift`, passed to Hydra as `augment=[specaugment,pitch_shift]`; after a
`:` further `:`-separated overrides for that row, e.g. `none:features.top_db=null`) and
every FSDD speaker, the speaker's 500 clips are the test split (`data.fold=<speaker>`),
validation is the other speakers' recordings 5-9 (FSDD's own validation rows), the rest
trains. Each cell is the real pipeline (prepare, featurize, train, keep the checkpoint with
the best validation loss, evaluate), tracked
in MLflow under the experiment `audiocnn-benchmarks`. Reports per config the mean and
std of test accuracy over speakers and the worst speaker.

Runs config by config (the most informative first), writing
benchmarks/results/augment_ablation.json after every cell; an interrupted run resumes
and skips the cells already there (with the same settings).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import benchmark_config, machine, train_and_evaluate

from audiocnn.data.prepare import prepare
from audiocnn.features.featurize import featurize

RESULTS = Path(__file__).parent / "results" / "augment_ablation.json"
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
CONFIGS = ["none", "none:features.top_db=null", "pitch_shift", "specaugment", "time_shift", "gain", "noise",
           "mixup", "combo"]
# Every cell: a 256-sample hop (half the speech front-end's frames: half the compute) and a
# cosine schedule over all epochs.
DEFAULT_OVERRIDES = ["features.hop_length=256", "features.window_frames=32", "scheduler=cosine"]


def config_overrides(config: str) -> list[str]:
    """`specaugment+pitch_shift:features.top_db=null` -> the Hydra overrides of that row."""
    augments, *extra = config.split(":")
    parts = augments.split("+")
    return [f"augment={parts[0]}" if len(parts) == 1 else f"augment=[{','.join(parts)}]", *extra]


def summarise(runs: list[dict], configs: list[str]) -> list[dict]:
    """Per config: mean / std of accuracy over the speakers done, the worst speaker."""
    rows = []
    for config in configs:
        first = {}  # the first run of each (config, fold): workers that met on a cell may both have run it
        for r in runs:
            first.setdefault((r["config"], r["fold"]), r)
        done = sorted((r for (c, _), r in first.items() if c == config), key=lambda r: r["fold"])
        if not done:
            continue
        accuracies = [r["accuracy"] for r in done]
        worst = min(done, key=lambda r: r["accuracy"])
        rows.append({"config": config, "folds": len(done), "mean": round(statistics.fmean(accuracies), 4),
                     "std": round(statistics.stdev(accuracies), 4) if len(done) > 1 else 0.0,
                     "worst_fold": worst["fold"], "worst": round(worst["accuracy"], 4),
                     "per_fold": {r["fold"]: round(r["accuracy"], 4) for r in done},
                     "mean_epochs": round(statistics.fmean(r["epochs"] for r in done), 1)})
    return rows


def table(rows: list[dict], folds: list[str]) -> str:
    lines = ["| augment | mean ± std over speakers | worst speaker | " + " | ".join(folds) + " | epochs |",
             "|---" * (4 + len(folds)) + "|"]
    for row in rows:
        cells = [f"{row['per_fold'][f]:.3f}" if f in row["per_fold"] else "—" for f in folds]
        partial = "" if row["folds"] == len(folds) else f" ({row['folds']} of {len(folds)} speakers)"
        lines.append(f"| `{row['config']}` | {row['mean']:.3f} ± {row['std']:.3f}{partial} | "
                     f"{row['worst']:.3f} ({row['worst_fold']}) | " + " | ".join(cells) + f" | {row['mean_epochs']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd-root", type=Path, default=Path("../shared/data/fsdd"))
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--folds", nargs="+", default=SPEAKERS)
    parser.add_argument("--model", default="crnn_gru")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--override", nargs="*", default=DEFAULT_OVERRIDES, help="Hydra overrides for every cell")
    parser.add_argument("--work", type=Path, default=Path("data/benchmarks/augment_ablation"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); with "
                        "several workers on disjoint --folds, 1 each")
    parser.add_argument("--report", action="store_true", help="only print the table of the results file")
    args = parser.parse_args()
    if args.report:
        report = json.loads(args.results.read_text())
        print(f"machine: {report['machine']}; {report['settings']}\n")
        print(table(report["summary"], SPEAKERS))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"model": args.model, "max_epochs": args.max_epochs, "patience": args.patience,
                "batch_size": args.batch_size, "overrides": args.override}
    base = ["data=fsdd", f"data.root={args.fsdd_root.resolve()}", "features=speech", f"model={args.model}",
            f"trainer.max_epochs={args.max_epochs}", f"trainer.patience={args.patience}",
            f"trainer.batch_size={args.batch_size}", "tracking.log_model=false", "evaluate.explain=false",
            *args.override]
    for config in args.configs:
        for fold in args.folds:
            if any(r["config"] == config and r["fold"] == fold for r in record(args.results, settings)):
                continue
            work = args.work / f"fold-{fold}"  # one prepared manifest + feature store per held-out speaker
            cell = [*base, f"data.fold={fold}", *config_overrides(config)]
            data_cfg = benchmark_config(work, *cell)
            prepare(data_cfg)
            featurize(data_cfg)
            out = work / config.replace(":", "_").replace("=", "-")
            cfg = benchmark_config(work, *cell, f"paths.models={out}/model", f"paths.metrics={out}/metrics")
            started = time.perf_counter()
            result = train_and_evaluate(cfg, run_name_suffix=f"ablation-{config}-{fold}")
            record(args.results, settings, {
                "config": config, "fold": fold, "accuracy": result["accuracy"],
                "balanced_accuracy": result["metrics"]["balanced_accuracy"], "macro_f1": result["macro_f1"],
                "accuracy_ci95": result["metrics"]["accuracy_ci95"], "epochs": result["epochs"],
                "seconds": round(time.perf_counter() - started, 1)})
            print(f"ablation: {config} on {fold}: accuracy {result['accuracy']:.3f}", flush=True)
    runs = record(args.results, settings)
    configs = list(dict.fromkeys([*CONFIGS, *args.configs, *(r["config"] for r in runs)]))
    print(f"\nmachine: {machine()}; {settings}\n")
    print(table(summarise(runs, configs), SPEAKERS))


def record(path: Path, settings: dict, run: dict | None = None) -> list[dict]:
    """The runs in `path` made with `settings` (others are dropped), after appending `run`.

    Locked, so that workers on disjoint folds can share one results file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = json.loads(path.read_text()) if path.exists() else {}
        runs = previous.get("runs", []) if previous.get("settings") == settings else []
        if run is not None:
            runs.append(run)
            configs = list(dict.fromkeys([*CONFIGS, *(r["config"] for r in runs)]))
            report = {"machine": machine(), "settings": settings, "summary": summarise(runs, configs), "runs": runs}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(path)
    return runs


if __name__ == "__main__":
    main()
