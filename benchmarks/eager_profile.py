"""Where eager `model.pt` scoring spends its time, and what channels-last conv weights change.

    .venv/bin/python benchmarks/eager_profile.py [--clips 1000] [--threads 2]

The default `crnn_gru` with FSDD's speech front-end (`data=fsdd`), untrained (speed does not depend on
the weights). Prints (1) the model's time per window on a batch of 256 windows with NCHW and with
channels-last conv weights, and their largest difference; (2) `Predictor.score` on `--clips` FSDD
recordings under cProfile: audio-seconds per second and the top functions by cumulative time.
The figures in docs/results.md ("Side by side, 2026-12-03") and in inference/predictor.py's
comment come from this script's code, run on the 2-core machine.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fsdd_manifest import FSDD


def per_window_ms(model, x: torch.Tensor, repeats: int = 10) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model.classify(x)
        started = time.perf_counter()
        for _ in range(repeats):
            model.classify(x)
    return (time.perf_counter() - started) / repeats / len(x) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from audiocnn.config import compose_config
    from audiocnn.inference.predictor import Predictor
    from audiocnn.models import build_model
    from audiocnn.models.bundle import save_bundle

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose_config(["data=fsdd"])
    model = build_model(cfg.model, 10, cfg.features.n_bins, cfg.features.top_db).eval()
    x = torch.randn(256, 1, cfg.features.n_bins, cfg.features.window_frames)
    nchw = per_window_ms(model, x)
    with torch.inference_mode():
        before = model.classify(x)
    model = model.to(memory_format=torch.channels_last)
    last = per_window_ms(model, x)
    with torch.inference_mode():
        difference = float((model.classify(x) - before).abs().max())
    print(f"model per window: NCHW {nchw:.2f} ms, channels-last weights {last:.2f} ms (max difference {difference:.1e})")

    with tempfile.TemporaryDirectory() as tmp:
        model = model.to(memory_format=torch.contiguous_format)
        save_bundle(model, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features),
                    [str(d) for d in range(10)], Path(tmp) / "model.pt")
        predictor = Predictor.load(Path(tmp) / "model.pt")
        paths = [str(p) for p in sorted((FSDD / "recordings").glob("*.wav"))[:args.clips]]
        list(predictor.score(paths[:50]))  # warm-up
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        results = list(predictor.score(paths))
        profile.disable()
        seconds = time.perf_counter() - started
    audio = sum(r.duration for r in results)
    print(f"Predictor.score on {len(paths)} FSDD clips under cProfile: {audio / seconds:.0f}x real time ({seconds:.2f} s)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
