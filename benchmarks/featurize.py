"""End-to-end featurize throughput: the project vs librosa.cqt (one process, and a pool).

    .venv/bin/python benchmarks/featurize.py                 # 1,000 FSDD clips, default front-end
    .venv/bin/python benchmarks/featurize.py --clips 3000

Same clips, same work for all three: decode (`audiocnn.data.audio.load_audio`), resample to `features.sr`
(soxr, `audiocnn.data.audio`), CQT, log, float16, write to disk.
(a) the project: `audiocnn.features.featurize.featurize` (DataLoader decoding workers,
    length-bucketed batched CQT), timed from the call to the finished store.
(b) `librosa.cqt` clip by clip in this process (numba warmed up first).
(c) `librosa.cqt` in a `multiprocessing.Pool` over all cores, each worker warmed up
    before the clock starts.
Prints audio-seconds per second, writes benchmarks/results/featurize.json; the last line
is `ratio_single=<a/b> ratio_pool=<a/c>`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from common import load_average, machine, save_results
from fsdd_manifest import write_fsdd_manifest

from audiocnn.settings import store_settings
from audiocnn.config import compose_config, validate_config
from audiocnn.data.audio import load_audio
from audiocnn.features.featurize import featurize
from audiocnn.features.reference import librosa_log_cqt

RESULTS = Path(__file__).parent / "results" / "featurize.json"
_PARAMS: dict = {}


def _librosa_clip(path: str, out) -> None:
    """decode + resample + librosa CQT + log + float16 + write, for one clip."""
    params = {k: v for k, v in _PARAMS.items()}
    wave = load_audio(path, params["sr"]).numpy()
    out.write(librosa_log_cqt(wave, **params).T.astype(np.float16).tobytes())


def _warm(params: dict) -> None:
    warnings.filterwarnings("ignore")
    _PARAMS.update(params)
    import torch

    torch.set_num_threads(1)  # one core per worker
    librosa_log_cqt(np.zeros(8192, np.float32), **params)


def _librosa_many(job: tuple[list[str], str]) -> int:
    paths, file = job
    with open(file, "wb") as out:
        for path in paths:
            _librosa_clip(path, out)
    return len(paths)


def run(clips: int, overrides: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="featurize-bench-"))
    cfg = compose_config([f"paths.prepared={work / 'prepared'}", f"paths.features={work / 'features'}",
                          "data=fsdd", "features=cqt", f"data.root={work}", "features.device=cpu", *overrides])
    validate_config(cfg)
    manifest = write_fsdd_manifest(work / "prepared", clips)
    audio_seconds = float(manifest["duration"].sum())
    params = {k: cfg.features[k] for k in ("sr", "hop_length", "fmin", "n_bins", "bins_per_octave", "amin")}
    paths = manifest["path"].tolist()
    load_before, described = load_average(), machine()  # before _warm sets this process to one thread

    started = time.perf_counter()
    featurize(store_settings(cfg))
    project = time.perf_counter() - started

    _warm(params)
    started = time.perf_counter()
    _librosa_many((paths, str(work / "librosa-single.f16")))
    single = time.perf_counter() - started

    cores = os.cpu_count()
    with multiprocessing.get_context("spawn").Pool(cores, initializer=_warm, initargs=(params,)) as pool:
        pool.map(abs, range(cores * 4))  # every worker started and warmed up
        jobs = [(paths[i::cores * 8], str(work / f"librosa-pool-{i}.f16")) for i in range(cores * 8)]
        started = time.perf_counter()
        assert sum(pool.map(_librosa_many, jobs)) == len(paths)
        pooled = time.perf_counter() - started

    speed = {name: audio_seconds / seconds for name, seconds in
             (("project", project), ("librosa_single", single), ("librosa_pool", pooled))}
    return {
        "machine": described, "cores": cores, "clips": len(paths), "audio_seconds": round(audio_seconds, 1),
        "features": params, "overrides": overrides,
        "seconds": {"project": round(project, 2), "librosa_single": round(single, 2), "librosa_pool": round(pooled, 2)},
        "audio_seconds_per_second": {k: round(v, 1) for k, v in speed.items()},
        "ratio_single": round(speed["project"] / speed["librosa_single"], 2),
        "ratio_pool": round(speed["project"] / speed["librosa_pool"], 2),
        "load_average_before": load_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000, help="FSDD clips (sorted by name)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. features.batch_size=128")
    args = parser.parse_args()
    result = run(args.clips, args.overrides)
    save_results(RESULTS, result)
    print(json.dumps(result, indent=2))
    print("| method | audio-s per s | vs librosa single |")
    print("|---|---|---|")
    for name, label in (("project", "audiocnn featurize"), ("librosa_single", "librosa.cqt, 1 process"),
                        ("librosa_pool", f"librosa.cqt, pool of {result['cores']}")):
        value = result["audio_seconds_per_second"][name]
        print(f"| {label} | {value} | {value / result['audio_seconds_per_second']['librosa_single']:.1f}x |")
    print(f"ratio_single={result['ratio_single']} ratio_pool={result['ratio_pool']}")


if __name__ == "__main__":
    main()
