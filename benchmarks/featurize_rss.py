"""Peak memory of featurize does not grow with the dataset, nor with the length of a clip.

    .venv/bin/python benchmarks/featurize_rss.py                  # 1 h and 10 h of FSDD, one 1-hour file
    .venv/bin/python benchmarks/featurize_rss.py --hours 1 --long-hours 0

Datasets of N hours list the FSDD recordings as many times as needed (a manifest, no
copies). The long clip is a generated one-hour 16 kHz WAV, written block by block.
Each featurize runs in a fresh child process (the real stage, default front-end,
`features.num_workers=2`); its peak RSS is `ru_maxrss` of the largest process of that
tree (the stage or one of its DataLoader workers), read with `resource.getrusage`.
Writes benchmarks/results/featurize_rss.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from common import load_average, machine, save_results
from fsdd_manifest import FSDD, write_fsdd_manifest

from audiocnn.config import write_params

RESULTS = Path(__file__).parent / "results" / "featurize_rss.json"
REPO = Path(__file__).resolve().parent.parent


def featurize_in_child(work: Path, *overrides: str) -> dict:
    """Run the featurize stage in a child process; its wall time and peak RSS (MB)."""
    params = write_params(work / "params.yaml", ["data=fsdd", "features=cqt", f"data.root={work}",
                                                 f"paths.prepared={work / 'prepared'}",
                                                 f"paths.features={work / 'features'}", "features.device=cpu",
                                                 *overrides])
    script = ("import resource, sys; sys.argv = ['featurize', '--params', sys.argv[1]]\n"
              "from audiocnn.config import stage_main\nfrom audiocnn.stages import featurize_stage\n"
              "stage_main(featurize_stage)\n"
              "print('maxrss_self_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
              "print('maxrss_workers_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, str(params)], cwd=REPO, check=True, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    values = dict(line.split() for line in done.stdout.splitlines() if line.startswith("maxrss_"))
    store = next((work / "features").iterdir())
    meta = json.loads((store / "store.json").read_text())
    return {"seconds": round(seconds, 1), "peak_rss_mb_stage": round(int(values["maxrss_self_kb"]) / 1024),
            "peak_rss_mb_worker": round(int(values["maxrss_workers_kb"]) / 1024),
            "peak_rss_mb": round(max(int(values["maxrss_self_kb"]), int(values["maxrss_workers_kb"])) / 1024),
            "clips": meta["clips"], "frames": meta["frames"], "store_mb": round(sum(
                p.stat().st_size for p in store.glob("*.f16")) / 2**20)}


def fsdd_hours(hours: float, work: Path) -> dict:
    one = write_fsdd_manifest(work / "prepared")
    repeat = math.ceil(hours * 3600 / one["duration"].sum())
    manifest = write_fsdd_manifest(work / "prepared", repeat=repeat)
    result = featurize_in_child(work)
    return {"hours": round(manifest["duration"].sum() / 3600, 2), "manifest_rows": len(manifest), **result}


def long_clip(hours: float, work: Path, sr: int = 16000) -> dict:
    """One clip of `hours` (generated block by block, never whole in memory)."""
    path = work / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as out:
        for block in range(int(hours * 3600)):
            t = block + np.arange(sr) / sr
            out.write((0.3 * np.sin(2 * np.pi * 220 * (1 + (t % 60) / 60) * t)
                       + 0.02 * rng.standard_normal(sr)).astype(np.float32))
    (work / "prepared").mkdir(parents=True, exist_ok=True)
    duration = sf.info(str(path)).duration
    pd.DataFrame([{"path": str(path), "label": "tone", "split": "train", "fold": "", "group": "0",
                   "duration": duration, "sr": sr}]).to_csv(work / "prepared" / "manifest.csv", index=False)
    (work / "prepared" / "classes.json").write_text(json.dumps(["tone"]))
    return {"hours": round(duration / 3600, 2), "file_mb": round(path.stat().st_size / 2**20),
            **featurize_in_child(work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="*", default=[1.0, 10.0])
    parser.add_argument("--long-hours", type=float, default=1.0, help="0: skip the long clip")
    args = parser.parse_args()
    if not (FSDD / "recordings").exists():
        sys.exit(f"FSDD not found at {FSDD} (set FSDD_ROOT)")
    result = {"machine": machine(), "load_average_before": load_average(), "datasets": []}
    for hours in args.hours:
        with tempfile.TemporaryDirectory(prefix="rss-") as work:
            result["datasets"].append(fsdd_hours(hours, Path(work)))
            print(json.dumps(result["datasets"][-1]), flush=True)
    if args.long_hours:
        with tempfile.TemporaryDirectory(prefix="rss-long-") as work:
            result["long_clip"] = long_clip(args.long_hours, Path(work))
            print(json.dumps(result["long_clip"]), flush=True)
    save_results(RESULTS, result)
    print("| featurized | clips | audio | peak RSS | wall time |")
    print("|---|---|---|---|---|")
    for row in result["datasets"]:
        print(f"| FSDD x{row['manifest_rows'] // 3000} | {row['clips']} | {row['hours']} h | {row['peak_rss_mb']} MB "
              f"| {row['seconds']} s |")
    if "long_clip" in result:
        row = result["long_clip"]
        print(f"| one long WAV | 1 | {row['hours']} h | {row['peak_rss_mb']} MB | {row['seconds']} s |")


if __name__ == "__main__":
    main()
