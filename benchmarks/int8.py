"""int8 ONNX against fp32 ONNX, in one run, on the same inputs: speed and test accuracy.

    .venv/bin/python benchmarks/int8.py --fsdd-model FSDD_MODEL --demo-model DEMO_MODEL \\
        --demo-prepared DEMO_PREPARED

Both models are trained `crnn_gru` folders (model.pt), made by (15 epochs: about 4 min for FSDD and
6 for the demo on 2 busy cores):
    # FSDD, official split (index 0-4 of each speaker and digit is test), speech front-end
    .venv/bin/python pipelines/train.py data=fsdd data.root=/work/shared/data/fsdd \\
        paths.raw=W/fsdd/raw paths.prepared=W/fsdd/prepared paths.features=W/fsdd/features \\
        trainer.max_epochs=15 tracking.log_model=false tracking.export_onnx=false
    # the demo (its train / val / test split), CQT front-end
    .venv/bin/python pipelines/train.py data=demo paths.raw=W/demo/raw paths.prepared=W/demo/prepared \\
        paths.features=W/demo/features trainer.max_epochs=15 tracking.log_model=false tracking.export_onnx=false
run by hand, each writes its model to data/hydra/runs/<time>/model (`dvc repro` writes the demo's
to data/models, its prepared data to data/prepared). --demo-prepared is the demo's paths.prepared
(its manifest.csv gives the test split and the calibration clips).

Each model is exported twice (`audiocnn.inference.export.export_model`): fp32, and int8
calibrated on its train split (`--calibration`: at most 64 clips, spread evenly). Then:
- accuracy: `audiocnn.load_model(file).predict` on the test split (FSDD: 300 clips; the demo's
  test rows), the label against the truth; and how far the int8 clip probabilities are from fp32's;
- speed, FSDD model: audio seconds / wall seconds of `predict` on the FSDD folder (--clips
  recordings, a few clips per call of the graph) and on one --long-minutes file made of FSDD
  recordings back to back (64 windows per call: the model's own speed), after a warm-up; fp32
  and int8 take turns on the same blocks of 50 files (`paired`), --repeats passes.
Prints a table and last `int8_speedup=<FSDD folder> fsdd_acc_fp32=... fsdd_acc_int8=...
demo_acc_fp32=... demo_acc_int8=...`; writes benchmarks/results/int8.json. On a shared machine the
speeds are indicative: compare them within one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from common import load_average, machine, save_results
from fsdd_manifest import FSDD, write_fsdd_manifest

RESULTS = Path(__file__).parent / "results" / "int8.json"
KINDS = ("fp32", "int8")


def accuracy(model, paths: list[str], labels: list[str]) -> tuple[float, np.ndarray, list[str]]:
    """(accuracy, clip probabilities (n, classes), labels) of `model` on `paths`."""
    records = model.predict(paths)
    errors = [r for r in records if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} clips failed, e.g. {errors[0]}")
    predicted = [r["label"] for r in records]
    probabilities = np.array([[r["probabilities"][c] for c in model.classes] for r in records])
    return float(np.mean([p == t for p, t in zip(predicted, labels)])), probabilities, predicted


def speed(model, paths: list[str]) -> tuple[float, float]:
    """(audio seconds, wall seconds) of one `predict` of `paths`."""
    started = time.perf_counter()
    records = model.predict(paths)
    seconds = time.perf_counter() - started
    return sum(r["duration"] for r in records), seconds


def paired(models: dict, paths: list[str], repeats: int, block: int = 50) -> dict:
    """fp32 and int8 timed in turns on the same blocks of `block` files (which goes first alternates),
    so that both see the same load on a shared machine; `repeats` passes. Speeds from the fastest
    pass of each, the speedup is the median over passes of fp32's time / int8's."""
    blocks = [paths[i: i + block] for i in range(0, len(paths), block)]
    passes = []
    for number in range(repeats):
        seconds, audio = dict.fromkeys(KINDS, 0.0), 0.0
        for index, files in enumerate(blocks):
            for kind in KINDS if (index + number) % 2 == 0 else KINDS[::-1]:
                duration, took = speed(models[kind], files)
                seconds[kind] += took
            audio += duration
        passes.append((audio, seconds))
    audio = passes[0][0]
    return {**{f"{kind}_x_real_time": round(audio / min(p[1][kind] for p in passes), 1) for kind in KINDS},
            **{f"{kind}_seconds": [round(p[1][kind], 2) for p in passes] for kind in KINDS},
            "audio_seconds": round(audio, 1),
            "int8_speedup": round(float(np.median([p[1]["fp32"] / p[1]["int8"] for p in passes])), 3)}


def long_file(path: Path, minutes: float, recordings: list[Path]) -> Path:
    target = int(minutes * 60 * 8000)
    with sf.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_16") as out:
        written, index = 0, 0
        while written < target:
            wave = sf.read(recordings[index % len(recordings)], dtype="float32")[0][: target - written]
            out.write(wave)
            written, index = written + len(wave), index + 1
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd-model", required=True, help="crnn_gru trained on FSDD's official split (a folder)")
    parser.add_argument("--demo-model", required=True, help="crnn_gru trained on the demo (a folder)")
    parser.add_argument("--demo-prepared", required=True, help="the demo's paths.prepared (manifest.csv)")
    parser.add_argument("--clips", type=int, default=3000, help="FSDD recordings timed (default: all)")
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from audiocnn import load_model
    from audiocnn.inference.export import export_model

    before = load_average()
    recordings = sorted((FSDD / "recordings").glob("*.wav"))
    fsdd_test = [p for p in recordings if int(p.stem.split("_")[2]) < 5]
    demo = pd.read_csv(Path(args.demo_prepared) / "manifest.csv")
    demo_test = demo[demo["split"] == "test"]
    result: dict = {"machine": machine(), "load_average_before": before,
                    "models": {"fsdd": str(Path(args.fsdd_model).resolve()), "demo": str(Path(args.demo_model).resolve())},
                    "command": "benchmarks/int8.py " + " ".join(sys.argv[1:]), "accuracy": {}, "speed": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_fsdd_manifest(work / "fsdd")  # its train rows: the FSDD model's calibration clips
        calibration = {"fsdd": str(work / "fsdd" / "manifest.csv"), "demo": str(Path(args.demo_prepared) / "manifest.csv")}
        files, models = {}, {}
        for name, folder in (("fsdd", args.fsdd_model), ("demo", args.demo_model)):
            for kind in ("fp32", "int8"):
                started = time.perf_counter()
                path = export_model(folder, "onnx", work / f"{name}-{kind}.onnx",
                                    quantize="int8" if kind == "int8" else None,
                                    calibration=calibration[name] if kind == "int8" else None)
                files[name, kind] = {"bytes": path.stat().st_size, "export_s": round(time.perf_counter() - started, 1)}
                models[name, kind] = load_model(path)
        tests = {"fsdd": ([str(p) for p in fsdd_test], [p.stem.split("_")[0] for p in fsdd_test]),
                 "demo": (demo_test["path"].tolist(), demo_test["label"].astype(str).tolist())}
        for name, (paths, labels) in tests.items():
            scores = {kind: accuracy(models[name, kind], paths, labels) for kind in ("fp32", "int8")}
            diff = np.abs(scores["int8"][1] - scores["fp32"][1])
            result["accuracy"][name] = {
                "clips": len(paths), "fp32": round(scores["fp32"][0], 4), "int8": round(scores["int8"][0], 4),
                "labels_equal": round(float(np.mean([a == b for a, b in zip(scores["fp32"][2], scores["int8"][2])])), 4),
                "max_abs_probability_difference": round(float(diff.max()), 5),
                "mean_abs_probability_difference": round(float(diff.mean()), 6),
                "file_bytes": {kind: files[name, kind]["bytes"] for kind in ("fp32", "int8")},
                "export_s": {kind: files[name, kind]["export_s"] for kind in ("fp32", "int8")}}
        inputs = {f"FSDD folder ({min(args.clips, len(recordings))} clips)": [str(p) for p in recordings[: args.clips]]}
        if args.long_minutes > 0:
            inputs[f"one {args.long_minutes:g}-minute file"] = [str(long_file(work / "long.wav", args.long_minutes,
                                                                              recordings))]
        for input_name, paths in inputs.items():
            for kind in KINDS:
                models["fsdd", kind].predict(paths[:2] if len(paths) > 1 else [str(recordings[0])])  # warm-up
            row = paired({kind: models["fsdd", kind] for kind in KINDS}, paths, args.repeats)
            result["speed"].append({"input": input_name, **row})
    print(f"{'test accuracy':<34} {'clips':>6} {'fp32':>7} {'int8':>7} {'labels equal':>13} {'max |dp|':>9}")
    for name, a in result["accuracy"].items():
        print(f"{name:<34} {a['clips']:>6} {a['fp32']:>7.4f} {a['int8']:>7.4f} {a['labels_equal']:>13.4f} "
              f"{a['max_abs_probability_difference']:>9.4f}")
    print(f"\n{'speed (FSDD model), x real time':<34} {'fp32':>9} {'int8':>9} {'int8 / fp32':>12}")
    for row in result["speed"]:
        print(f"{row['input']:<34} {row['fp32_x_real_time']:>9.1f} {row['int8_x_real_time']:>9.1f} "
              f"{row['int8_speedup']:>12.3f}")
    save_results(RESULTS, result)
    acc = result["accuracy"]
    print(f"int8_speedup={result['speed'][0]['int8_speedup']} fsdd_acc_fp32={acc['fsdd']['fp32']} "
          f"fsdd_acc_int8={acc['fsdd']['int8']} demo_acc_fp32={acc['demo']['fp32']} demo_acc_int8={acc['demo']['int8']}")


if __name__ == "__main__":
    main()
