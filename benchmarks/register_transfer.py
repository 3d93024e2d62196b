"""Register transfer on the demo: train on notes below a split pitch, test above it (and the reverse).

    .venv/bin/python benchmarks/register_transfer.py                  # every model, none + pitch_shift
    .venv/bin/python benchmarks/register_transfer.py --models crnn_gru:max --augment none --epochs 5
    .venv/bin/python benchmarks/register_transfer.py --report         # the table of the results file
    .venv/bin/python benchmarks/register_transfer.py --clips-per-class 100 --epochs 40   # scaled up

On a CQT a transposition is a shift along frequency. The demo generator writes two registers of
the same eight classes (audiocnn/data/sources/demo.py, `midi_range`): `low` (MIDI 40 to
split-1) and `high` (split to 84), each clip i of a class drawing the same randomness in both
(duration, timbre, onsets, noise, gain), so the two test sets differ only in pitch. Per
register, clips 0..n-1 train (every fifth of them validates) and the next `--test-clips-per-class`
are its test set. A model trained on one register is tested on both test sets at once (one test
split, scored per register from predictions.csv): the *same-register* accuracy is the baseline
of the same size, the *transposed* accuracy is the transfer; the cost is their difference,
averaged over the two directions (train low / train high). The order-only classes
(`interval_up`, `interval_down`) are scored separately.

A row is a model (`cnn`, or `crnn_gru:<freq_pool>`) with an augment config (`none`,
`pitch_shift`). Every cell is the real pipeline (prepare from a CSV, featurize, train, keep the
best-validation-loss checkpoint, evaluate), tracked in MLflow (experiment `audiocnn-benchmarks`).
Writes benchmarks/results/register_transfer.json after every cell; `--set key=value` adds Hydra
overrides to every cell.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from common import benchmark_config, load_average, machine, save_results, train_and_evaluate

from audiocnn.data.sources.demo import CLASSES, MIDI_RANGE, ORDER_ONLY_CLASSES, generate_demo

RESULTS = Path(__file__).parent / "results" / "register_transfer.json"
MODELS = ["cnn", "crnn_gru:flatten", "crnn_gru:max", "crnn_gru:attention", "crnn_gru:max_centroid"]
REGISTERS = ("low", "high")


def registers(split_midi: int) -> dict[str, tuple[int, int]]:
    return {"low": (MIDI_RANGE[0], split_midi - 1), "high": (split_midi, MIDI_RANGE[1])}


def write_clips(work: Path, args) -> dict[str, list[dict]]:
    """Both registers' clips, `{register: [{path, label, index}]}`; deterministic, cheap to redo."""
    total = args.clips_per_class + args.test_clips_per_class
    return {name: [{**clip, "index": int(Path(clip["path"]).stem.rsplit("_", 1)[1])}
                   for clip in generate_demo(work / "raw" / name, seed=args.data_seed, clips_per_class=total,
                                             midi_range=span, progress=False)]
            for name, span in registers(args.split_midi).items()}


def write_csv(work: Path, train_register: str, clips: dict[str, list[dict]], n_train: int) -> Path:
    """The manifest source of one direction: its register's train/val clips, both registers' test clips."""
    path = work / f"train-{train_register}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "group"])
        for register, rows in clips.items():
            for clip in rows:
                if clip["index"] >= n_train:
                    split = "test"
                elif register == train_register:
                    split = "val" if clip["index"] % 5 == 0 else "train"
                else:
                    continue
                writer.writerow([clip["path"], clip["label"], split, f"{register}-{Path(clip['path']).stem}"])
    return path


def scores(predictions: Path) -> dict[str, dict[str, float]]:
    """{register: {accuracy, order_only}} of one model's test predictions (the register is the folder)."""
    frame = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    frame["register"] = [Path(p).parts[-3] for p in frame["path"]]
    frame["correct"] = frame["actual"] == frame["predicted"]
    out = {}
    for register, rows in frame.groupby("register"):
        order = rows[rows["actual"].isin(ORDER_ONLY_CLASSES)]
        out[register] = {"accuracy": round(float(rows["correct"].mean()), 4),
                         "order_only": round(float(order["correct"].mean()), 4), "clips": len(rows)}
    return out


def run_cell(work: Path, row: str, augment: str, train_register: str, csv_path: Path, args) -> dict:
    model, _, freq_pool = row.partition(":")
    out = work / "runs" / f"{row.replace(':', '-')}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', augment)}-{train_register}"
    overrides = [f"model={model}", f"augment={augment}", "data=csv", f"data.csv={csv_path}",
                 f"paths.prepared={work / 'prepared' / train_register}",
                 f"paths.features={work / 'features' / train_register}",
                 f"paths.models={out}/model", f"paths.metrics={out}/metrics", f"seed={args.seed}",
                 f"trainer.max_epochs={args.epochs}", f"trainer.patience={args.epochs}",
                 "tracking.log_model=false", "tracking.export_onnx=false", "evaluate.explain=false",
                 *([f"model.freq_pool={freq_pool}"] if freq_pool else []), *args.set]
    cfg = benchmark_config(work, *overrides)
    started = time.perf_counter()
    result = train_and_evaluate(cfg, run_name_suffix=f"register={train_register}")
    per_register = scores(Path(cfg.paths.metrics) / "predictions.csv")
    other = REGISTERS[1 - REGISTERS.index(train_register)]
    return {"row": row, "augment": augment, "train": train_register, "same": per_register[train_register],
            "transposed": per_register[other], "epochs": result["epochs"],
            "seconds": round(time.perf_counter() - started, 1), "n_parameters": result["n_parameters"]}


def summary(runs: list[dict]) -> list[dict]:
    """One line per (row, augment): same / transposed accuracy and order-only accuracy, mean of the directions."""
    lines = []
    for key in dict.fromkeys((r["row"], r["augment"]) for r in runs):
        cells = [r for r in runs if (r["row"], r["augment"]) == key]
        mean = {f"{where}_{what}": round(statistics.mean(c[where][what] for c in cells), 4)
                for where in ("same", "transposed") for what in ("accuracy", "order_only")}
        lines.append({"row": key[0], "augment": key[1], "directions": sorted(c["train"] for c in cells), **mean,
                      "cost": round(mean["same_accuracy"] - mean["transposed_accuracy"], 4),
                      "epochs": statistics.mean(c["epochs"] for c in cells)})
    return lines


def table(runs: list[dict]) -> str:
    lines = ["| model | augment | same register | transposed | cost (points) | order-only, same | "
             "order-only, transposed | directions |", "|---|---|---|---|---|---|---|---|"]
    for s in summary(runs):
        lines.append(f"| `{s['row']}` | `{s['augment']}` | {s['same_accuracy']:.3f} | {s['transposed_accuracy']:.3f} | "
                     f"{100 * s['cost']:.1f} | {s['same_order_only']:.3f} | {s['transposed_order_only']:.3f} | "
                     f"{', '.join(s['directions'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="cnn, crnn_gru or crnn_gru:<freq_pool>")
    parser.add_argument("--augment", nargs="+", default=["none", "pitch_shift"])
    parser.add_argument("--directions", nargs="+", default=list(REGISTERS), choices=REGISTERS,
                        help="the register each model trains on")
    parser.add_argument("--split-midi", type=int, default=62, help="low: MIDI 40..split-1, high: split..84")
    parser.add_argument("--clips-per-class", type=int, default=25, help="per register: train + val (1 in 5)")
    parser.add_argument("--test-clips-per-class", type=int, default=10, help="per register")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], help="further Hydra overrides for every cell")
    parser.add_argument("--work", type=Path, default=Path("data/benchmarks/register_transfer"))
    parser.add_argument("--results", type=Path, nargs="+", default=[RESULTS],
                        help="the file written (the first); --report joins the runs of every one")
    parser.add_argument("--report", action="store_true", help="print the table of --results and stop")
    args = parser.parse_args()
    if args.report:
        print(table([run for path in args.results for run in json.loads(path.read_text())["runs"]]))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work = args.work.resolve()
    clips = write_clips(args.work, args)
    csvs = {register: write_csv(args.work, register, clips, args.clips_per_class) for register in args.directions}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("report", "results")}
    result = {"machine": machine(), "load_average_before": load_average(), "settings": settings,
              "classes": list(CLASSES), "order_only_classes": list(ORDER_ONLY_CLASSES),
              "registers": registers(args.split_midi), "runs": []}
    for augment in args.augment:
        for row in args.models:
            for register in args.directions:
                result["runs"].append(run_cell(args.work, row, augment, register, csvs[register], args))
                result["summary"] = summary(result["runs"])
                args.results[0].parent.mkdir(parents=True, exist_ok=True)
                save_results(args.results[0], result)
    print(f"\nmachine: {machine()}; {args.clips_per_class} train+val and {args.test_clips_per_class} test clips "
          f"per class and register; {args.epochs} epochs\n")
    print(table(result["runs"]))


if __name__ == "__main__":
    main()
