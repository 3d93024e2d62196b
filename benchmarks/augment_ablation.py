"""Augmentation ablation on FSDD, leave-one-speaker-out: does each augmentation help unseen speakers?

    .venv/bin/python benchmarks/augment_ablation.py --fsdd-root ../free-spoken-digit-dataset --threads 1
    .venv/bin/python benchmarks/augment_ablation.py --configs none pitch_shift --folds theo   # a probe
    .venv/bin/python benchmarks/augment_ablation.py --report      # the table of the results file
    .venv/bin/python benchmarks/augment_ablation.py --preset robust --results benchmarks/results/robust_ablation.json

`--preset robust` is the robust recipe's ablation (conf/experiment/robust.yaml): the best
augmentation row (`combo`), each new piece alone on top of it, and `experiment=robust`, each
with seeds 0, 1 and 2 (10 rows x 6 speakers x 3 seeds; 70-200 s a cell, median 100 s, for one
thread of a 2-core x86_64 CPU: about 2.5 hours as two workers); its table adds the ECE at the model's
temperature and at temperature 1. A row that differs from an earlier one only in `evaluate.*`
settings (test-time views) scores that row's model instead of training another: the same
weights with and without the views, so the difference is the views' alone.

A row (`--configs`) is an augment config (`conf/augment/<name>.yaml`), or a `+`-joined
list such as `specaugment+pitch_shift`, passed to Hydra as `augment=[specaugment,pitch_shift]`;
after a `:`, further `:`-separated overrides for that row (`none:features.top_db=null`,
`mixup:seed=1`); a row whose first part is itself an override (`experiment=robust`) sets no
augment config. `ensemble:<row>` trains nothing: it averages the class probabilities of the
models of `<row>`, `<row>:seed=1` and `<row>:seed=2` (run those first). A row that was also
run with other seeds gets a further row: each speaker's accuracy averaged over the seeds.

For every row and every FSDD speaker, the speaker's 500 clips are the test split
(`data.fold=<speaker>`), validation is the other speakers' recordings 5-9 (FSDD's own
validation rows), the rest trains. Each cell is the real pipeline (prepare, featurize,
train, keep the checkpoint with the best validation loss, evaluate), tracked in MLflow
under the experiment `audiocnn-benchmarks`. Reports per row the mean and std of test
accuracy over speakers and the worst speaker.

Runs row by row, writing benchmarks/results/augment_ablation.json after every cell; an
interrupted run resumes and skips the cells already there (with the same settings).
Several workers on disjoint `--folds` may share the results file.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import benchmark_config, machine, train_and_evaluate

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.data.prepare import prepare
from audiocnn.evaluation.ensemble import evaluate_ensemble
from audiocnn.experiment import evaluate_job, job_of
from audiocnn.experiment import evaluate_model
from audiocnn.features.featurize import featurize

RESULTS = Path(__file__).parent / "results" / "augment_ablation.json"
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
BEST = "specaugment+time_shift+mixup"  # conf/augment/combo.yaml
CONFIGS = ["none", "none:features.top_db=null",
           "pitch_shift", "specaugment", "time_shift", "gain", "noise", "mixup",  # each alone
           "pitch_shift+specaugment+time_shift+gain", "pitch_shift+specaugment+time_shift",  # combinations
           "specaugment+time_shift", BEST,
           "none:seed=1", "none:seed=2", "specaugment+time_shift:seed=1", "specaugment+time_shift:seed=2",
           f"{BEST}:seed=1", f"{BEST}:seed=2", "ensemble:none", f"ensemble:{BEST}"]
ENSEMBLE_SEEDS = [0, 1, 2]  # the members of an `ensemble:<config>` row
ROBUST_PIECES = [BEST, f"{BEST}+channel", f"{BEST}:norm=pcen:features.top_db=null",
                 f"{BEST}:norm=bin_norm:features.top_db=null", f"{BEST}:+trainer/callbacks=swa",
                 f"{BEST}:data.val_groups=1", f"{BEST}:trainer.calibrate=temperature",
                 f"{BEST}:data.val_groups=1:trainer.calibrate=temperature", f"{BEST}:evaluate.tta.pitch_bins=[-1,0,1]",
                 "experiment=robust"]
# The new defaults (conf/config.yaml), the same models scored with three pitch views, and the old
# defaults (no augmentation, no schedule), seed by seed: a run cut short still compares equal seeds.
DEFAULTS_ROWS = ["defaults", "defaults:evaluate.tta.pitch_bins=[-1,0,1]", "none:scheduler=none"]
PRESETS = {"robust": [row if seed == 0 else f"{row}:seed={seed}" for row in ROBUST_PIECES for seed in (0, 1, 2)],
           "defaults": [row if seed == 0 else f"{row}:seed={seed}" for seed in (0, 1, 2) for row in DEFAULTS_ROWS]}
# Every cell: a 256-sample hop (half the speech front-end's frames: half the compute) and a
# cosine schedule over all epochs.
DEFAULT_OVERRIDES = ["features.hop_length=256", "features.window_frames=32", "scheduler=cosine"]


def config_overrides(config: str) -> list[str]:
    """`specaugment+pitch_shift:features.top_db=null` -> the Hydra overrides of that row."""
    augments, *extra = config.split(":")
    if augments == "defaults":  # conf/config.yaml's own augmentation: the row sets none
        return extra
    if "=" in augments:  # an override (experiment=robust): the row sets no augment config itself
        return [augments, *extra]
    parts = augments.split("+")
    return [f"augment={parts[0]}" if len(parts) == 1 else f"augment=[{','.join(parts)}]", *extra]


def all_configs(runs: list[dict]) -> list[str]:
    """The rows of the table: CONFIGS' order first, then any other row that was run."""
    return list(dict.fromkeys([*CONFIGS, *(r["config"] for r in runs)]))


def summarise(runs: list[dict], configs: list[str]) -> list[dict]:
    """Per config: mean / std of accuracy over the speakers done, the worst speaker; then the
    seed means (`seed_means`)."""
    first = {}  # the first run of each (config, fold): workers that met on a cell may both have run it
    for r in runs:
        first.setdefault((r["config"], r["fold"]), r)
    rows = []
    for config in configs:
        done = [r for (c, _), r in first.items() if c == config]
        if done:
            rows.append(row(config, {r["fold"]: r["accuracy"] for r in done},
                            statistics.fmean(r["epochs"] for r in done),
                            {k: [r[k] for r in done if k in r] for k in ("ece", "ece_uncalibrated")}))
    return rows + seed_means(rows)


def row(config: str, per_fold: dict[str, float], epochs: float, calibration: dict | None = None) -> dict:
    """One table row from `per_fold` (speaker -> accuracy): mean / std over the speakers, the worst;
    `calibration` (`ece` / `ece_uncalibrated` -> each speaker's value) gives their means."""
    worst = min(per_fold, key=per_fold.get)
    return {"config": config, "folds": len(per_fold), "mean": round(statistics.fmean(per_fold.values()), 4),
            **{f"mean_{key}": round(statistics.fmean(values), 4) for key, values in (calibration or {}).items() if values},
            "std": round(statistics.stdev(per_fold.values()), 4) if len(per_fold) > 1 else 0.0,
            "worst_fold": worst, "worst": round(per_fold[worst], 4),
            "per_fold": {fold: round(per_fold[fold], 4) for fold in sorted(per_fold)},
            "mean_epochs": round(epochs, 1)}


def seed_means(rows: list[dict]) -> list[dict]:
    """For a config also run as `<config>:seed=N` (seed 0 is the config itself), on every speaker:
    a row of each speaker's accuracy averaged over the seeds; `seed_std` is the std of the
    seeds' means over speakers."""
    complete = [r for r in rows if r["folds"] == len(SPEAKERS)]
    means = []
    for base in (r["config"] for r in complete):
        seeds = [r for r in complete if re.fullmatch(re.escape(base) + r"(:seed=\d+)?", r["config"])]
        if len(seeds) < 2:
            continue
        per_fold = {fold: statistics.fmean(r["per_fold"][fold] for r in seeds) for fold in SPEAKERS}
        calibration = {k: [r[f"mean_{k}"] for r in seeds if f"mean_{k}" in r] for k in ("ece", "ece_uncalibrated")}
        mean = row(f"{base}, mean of {len(seeds)} seeds", per_fold, statistics.fmean(r["mean_epochs"] for r in seeds),
                   calibration)
        mean["seed_std"] = round(statistics.stdev(r["mean"] for r in seeds), 4)
        means.append(mean)
    return means


def table(rows: list[dict], folds: list[str]) -> str:
    lines = ["| augment | mean ± std over speakers | worst speaker | " + " | ".join(folds) + " | epochs | "
             "ECE (at T / at T=1) |", "|---" * (5 + len(folds)) + "|"]
    for row in rows:
        cells = [f"{row['per_fold'][f]:.3f}" if f in row["per_fold"] else "—" for f in folds]
        partial = "" if row["folds"] == len(folds) else f" ({row['folds']} of {len(folds)} speakers)"
        if "seed_std" in row:
            partial += f" (seeds' means ± {row['seed_std']:.3f})"
        lines.append(f"| `{row['config']}` | {row['mean']:.3f} ± {row['std']:.3f}{partial} | "
                     f"{row['worst']:.3f} ({row['worst_fold']}) | " + " | ".join(cells) + f" | {row['mean_epochs']} | "
                     + (f"{row['mean_ece']:.3f} / {row['mean_ece_uncalibrated']:.3f} |" if "mean_ece_uncalibrated" in row
                        else "— |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd-root", type=Path, default=Path("../free-spoken-digit-dataset"))
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named list of rows instead of --configs")
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
        print(table(summarise(report["runs"], all_configs(report["runs"])), SPEAKERS))
        return
    if args.preset:
        args.configs = PRESETS[args.preset]
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
            started = time.perf_counter()
            result = run_cell(args.work / f"fold-{fold}", base, config, fold)
            record(args.results, settings, {
                "config": config, "fold": fold, "accuracy": result["accuracy"],
                "balanced_accuracy": result["balanced_accuracy"], "macro_f1": result["macro_f1"],
                "accuracy_ci95": result["accuracy_ci95"], "epochs": result["epochs"],
                **{k: result[k] for k in ("ece", "ece_uncalibrated", "temperature") if k in result},
                "seconds": round(time.perf_counter() - started, 1)})
            print(f"ablation: {config} on {fold}: accuracy {result['accuracy']:.3f}", flush=True)
    runs = record(args.results, settings)
    print(f"\nmachine: {machine()}; {settings}\n")
    print(table(summarise(runs, all_configs(runs)), SPEAKERS))


def cell_dir(work: Path, config: str) -> Path:
    """Where a row's model and metrics go in a fold's `work` folder (a name Hydra takes as a path)."""
    return work / re.sub(r"[\[\],'\" ]", "_", config.replace(":", "_").replace("=", "-"))


def evaluation_base(config: str) -> str:
    """The row whose model `config` can reuse: `config` without its `evaluate.*` overrides, which
    change only how the test split is scored (`combo:evaluate.tta.pitch_bins=[-1,0,1]:seed=1` -> `combo:seed=1`)."""
    augments, *extra = config.split(":")
    return ":".join([augments, *(part for part in extra if not part.startswith("evaluate."))])


def run_cell(work: Path, base: list[str], config: str, fold: str) -> dict:
    """Test metrics of `config` with `fold` held out; `work` holds the fold's manifest and store.

    `ensemble:<config>` trains nothing: it averages the probabilities of the models that
    `<config>`, `<config>:seed=1`, ... (ENSEMBLE_SEEDS) left in their cells.
    """
    ensemble = config.startswith("ensemble:")
    member = config.removeprefix("ensemble:")
    cell = [*base, f"data.fold={fold}", *config_overrides(member)]
    data_cfg = benchmark_config(work, *cell)
    prepare(prepare_settings(data_cfg))
    featurize(store_settings(data_cfg))
    out = cell_dir(work, config)
    cfg = benchmark_config(work, *cell, f"paths.models={out}/model", f"paths.metrics={out}/metrics")
    trained = cell_dir(work, evaluation_base(member)) / "model"
    if not ensemble and trained != out / "model" and (trained / "model.pt").exists():
        cfg.paths.models = str(trained)  # only evaluate.* differs: score that row's model (a paired comparison)
        return {**evaluate_model(job_of(cfg)), "epochs": cfg.trainer.max_epochs}  # patience >= max_epochs: all ran
    if not ensemble:
        result = train_and_evaluate(cfg, run_name_suffix=f"ablation-{config}-{fold}")
        return {**result["metrics"], "epochs": result["epochs"]}
    members = [cell_dir(work, member if seed == 0 else f"{member}:seed={seed}") / "model" for seed in ENSEMBLE_SEEDS]
    missing = [str(m) for m in members if not (m / "model.pt").exists()]
    if missing:
        raise SystemExit(f"{config}: run the members first (--configs {member} {member}:seed=1 ...); "
                         f"missing {', '.join(missing)}")
    cfg.ensemble = [str(m) for m in members]
    return {**evaluate_ensemble(evaluate_job(job_of(cfg))), "epochs": cfg.trainer.max_epochs}


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
            report = {"machine": machine(), "settings": settings, "summary": summarise(runs, all_configs(runs)),
                      "runs": runs}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(path)
    return runs


if __name__ == "__main__":
    main()
