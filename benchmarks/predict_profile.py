"""Where `predict` with an exported ONNX file spends its time on FSDD clips: one plain timed run, then
cProfile's top functions by own time (the #28 profile in the session note of 2026-12-03).

    .venv/bin/python benchmarks/predict_profile.py [--clips 3000]

The model is the default `crnn_gru` with FSDD's speech front-end, randomly initialised (as
benchmarks/predict.py: speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from fsdd_manifest import FSDD
from predict import untrained_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()
    from audiocnn import load_model
    from audiocnn.inference.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx = export_model(untrained_bundle(work / "model"), "onnx", work / "model.onnx")
        files = [str(p) for p in sorted((FSDD / "recordings").glob("*.wav"))[:args.clips]]
        backend = load_model(onnx).backend
        list(backend.score(files[:50]))  # warm-up
        started = time.perf_counter()
        scored = list(backend.score(files))
        seconds = time.perf_counter() - started
        print(f"{len(files)} clips in {seconds:.2f} s: {sum(r.duration for r in scored) / seconds:.0f}x real time")
        profile = cProfile.Profile()
        profile.enable()
        list(backend.score(files))
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
