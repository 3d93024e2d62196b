"""Input normalisation against a channel change: `norm=none|pcen|bin_norm` on the demo, test clips as
recorded and through another "microphone".

    .venv/bin/python benchmarks/norm_channel.py                       # all rows, writes the results file
    .venv/bin/python benchmarks/norm_channel.py --report              # the table of the results file

Each row trains the same model (`--model`, `--max-epochs`, demo with `--clips-per-class`) with one
`norm` option through the real pipeline (prepare, featurize, train, evaluate), then scores the test
split twice with the saved bundle (`audiocnn.load_model`): the clips as they are, and the same clips
through a simulated channel: 20 dB quieter and a first-order pre-emphasis filter
y[n] = x[n] - 0.9 x[n-1] (a tilt of about +6 dB/octave below 1.4 kHz at 16 kHz: the sound of a
small, bright microphone). Reports both accuracies and the drop. One seed: a first look, not a
significance test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from common import benchmark_config, load_average, machine, save_results, train_and_evaluate
from scipy.signal import lfilter

from audiocnn import load_model

RESULTS = Path(__file__).parent / "results" / "norm_channel.json"
ROWS = ["none", "pcen", "bin_norm"]


def channel(wave: np.ndarray) -> np.ndarray:
    """Another microphone: pre-emphasis (a high-frequency tilt), 20 dB quieter."""
    return (0.1 * lfilter([1.0, -0.9], [1.0], wave)).astype(np.float32)


def accuracy(folder: Path, paths: list[str], labels: list[str], sr: int, shifted: bool) -> float:
    waves = [sf.read(p, dtype="float32")[0] for p in paths]
    waves = [channel(w) if shifted else w for w in waves]
    answers = load_model(folder).predict(waves, sample_rate=sr)
    return float(np.mean([a["label"] == y for a, y in zip(answers, labels)]))


def run_row(norm: str, args, work: Path) -> dict:
    overrides = ["data=demo", f"data.clips_per_class={args.clips_per_class}", f"model={args.model}",
                 f"norm={norm}", f"trainer.max_epochs={args.max_epochs}", "tracking.log_model=false",
                 f"paths.models={work / norm / 'models'}", f"paths.metrics={work / norm / 'metrics'}",
                 f"tracking.uri=sqlite:///{work / 'mlflow.db'}", *args.override]
    cfg = benchmark_config(work, *overrides)
    result = train_and_evaluate(cfg, run_name_suffix=f"norm={norm}")
    manifest = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    folder = Path(cfg.paths.models)
    clean = accuracy(folder, test["path"].tolist(), test["label"].tolist(), cfg.features.sr, shifted=False)
    shifted = accuracy(folder, test["path"].tolist(), test["label"].tolist(), cfg.features.sr, shifted=True)
    return {"norm": norm, "test_clips": len(test), "accuracy": round(clean, 4),
            "accuracy_channel_shift": round(shifted, 4), "drop": round(clean - shifted, 4),
            "evaluate_stage_accuracy": round(result["accuracy"], 4), "epochs": result["epochs"],
            "train_seconds": result["train_seconds"]}


def table(rows: list[dict]) -> str:
    lines = ["| norm | test accuracy | after the channel change | drop |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['norm']}` | {r['accuracy']:.3f} | {r['accuracy_channel_shift']:.3f} | {r['drop']:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clips-per-class", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for every row")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only print the table of the results file")
    args = parser.parse_args()
    if args.report:
        print(table(json.loads(args.results.read_text())["rows"]))
        return
    started, before = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="norm_channel-") as tmp:
        rows = [run_row(norm, args, Path(tmp)) for norm in args.rows]
    save_results(args.results, {
        "machine": machine(), "load_average_before": before, "seconds": round(time.perf_counter() - started, 1),
        "settings": {"model": args.model, "clips_per_class": args.clips_per_class, "max_epochs": args.max_epochs,
                     "override": args.override, "channel": "x 0.1 (-20 dB), y[n] = x[n] - 0.9 x[n-1]"},
        "rows": rows})
    print(table(rows))


if __name__ == "__main__":
    main()
