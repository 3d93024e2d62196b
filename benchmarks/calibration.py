"""Temperature scaling and test-time augmentation on an unseen FSDD speaker: ECE and accuracy.

    .venv/bin/python benchmarks/calibration.py --fsdd-root ../shared/data/fsdd --threads 1 [--folds george]
    .venv/bin/python benchmarks/calibration.py --report     # the table of the results file

For each speaker (`--folds`), the speaker's 500 clips are the test split (`data.fold=<speaker>`),
validation is the other speakers' recordings 5-9 (FSDD's own validation rows: *seen* speakers),
the rest trains: the augmentation ablation's cell (crnn_gru, 15 epochs, cosine schedule, the
speech front-end, a 256-sample hop, 32-frame windows, no augmentation) with
`trainer.calibrate=temperature`, so the train stage fits T on validation and stores it in model.pt.
The model is then evaluated twice: without test-time views, and with `evaluate.tta` =
`--pitch-bins` x `--time-frames`. Each evaluation reports test.json's `ece` (at T) and
`ece_uncalibrated` (T = 1). Results: benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import benchmark_config, machine, save_results, train_and_evaluate
from omegaconf import open_dict

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.data.prepare import prepare
from audiocnn.experiment import evaluate_model, job_of
from audiocnn.features.featurize import featurize

RESULTS = Path(__file__).parent / "results" / "calibration.json"
SETTINGS = ["model=crnn_gru", "trainer.max_epochs=15", "trainer.patience=15", "trainer.batch_size=64",
            "features.hop_length=256", "features.window_frames=32", "scheduler=cosine",
            "trainer.calibrate=temperature", "tracking.log_model=false", "evaluate.explain=false"]


def run_fold(work: Path, fsdd_root: Path, fold: str, tta: dict) -> dict:
    cell = ["data=fsdd", f"data.root={fsdd_root.resolve()}", "features=speech", *SETTINGS, f"data.fold={fold}"]
    cfg = benchmark_config(work, *cell, f"paths.models={work}/model", f"paths.metrics={work}/metrics")
    prepare(prepare_settings(cfg))
    featurize(store_settings(cfg))
    started = time.perf_counter()
    trained = train_and_evaluate(cfg, run_name_suffix=f"calibration-{fold}")
    plain = trained["metrics"]
    with open_dict(cfg):
        cfg.evaluate.tta = tta
    viewed = evaluate_model(job_of(cfg))
    keep = ("accuracy", "ece_uncalibrated", "ece", "temperature")
    return {"fold": fold, "epochs": trained["epochs"], "seconds": round(time.perf_counter() - started, 1),
            "no_tta": {k: plain[k] for k in keep}, "tta": {k: viewed[k] for k in keep}}


def table(report: dict) -> str:
    lines = ["| speaker | T | accuracy | ECE at T=1 | ECE at T | accuracy, TTA | ECE at T=1, TTA | ECE at T, TTA |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        a, b = r["no_tta"], r["tta"]
        lines.append(f"| {r['fold']} | {a['temperature']:.3f} | {a['accuracy']:.3f} | {a['ece_uncalibrated']:.3f} | "
                     f"{a['ece']:.3f} | {b['accuracy']:.3f} | {b['ece_uncalibrated']:.3f} | {b['ece']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd-root", type=Path, default=Path("../shared/data/fsdd"))
    parser.add_argument("--folds", nargs="+", default=["george"])
    parser.add_argument("--pitch-bins", type=int, nargs="+", default=[-1, 0, 1])
    parser.add_argument("--time-frames", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--work", type=Path, default=Path("data/benchmarks/calibration"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--report", action="store_true", help="only print the table of the results file")
    args = parser.parse_args()
    if not args.report:
        if args.threads:
            torch.set_num_threads(args.threads)
        tta = {"pitch_bins": args.pitch_bins, "time_frames": args.time_frames}
        runs = [run_fold(args.work / f"fold-{fold}", args.fsdd_root, fold, tta) for fold in args.folds]
        save_results(args.results, {"machine": machine(), "settings": SETTINGS, "tta": tta, "runs": runs})
    report = json.loads(args.results.read_text())
    print(f"machine: {report['machine']}; tta {report['tta']}\n")
    print(table(report))


if __name__ == "__main__":
    main()
