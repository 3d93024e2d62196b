"""Resampling an odd rate costs what any rate costs: featurize and serving, with and without 16,001 Hz.

    .venv/bin/python benchmarks/resample_rss.py
    .venv/bin/python benchmarks/resample_rss.py --clips 300

(a) featurize (the real stage, in a child process, CPU, `features.num_workers=2`) on a
    `data=folder` dataset of FSDD recordings (8 kHz, symbolic links), then on the same
    folder plus one 3 KB WAV at 16,001 Hz. Peak RSS is that of the largest process of the
    tree: the stage (its VmHWM) or a DataLoader worker (`ru_maxrss` of the stage's
    children). torchaudio's resampler built a kernel from the reduced ratio 16001/16000
    there (5.3 GB for that file).
(b) serving in a child process: the pyfunc `AudioClassifier` (as MLflow loads it) around
    an untrained default model, warmed up with a 16 kHz request, then one request of 10
    samples at 16,001 Hz: its wall time and the process's peak RSS (VmHWM) before and after.
Writes benchmarks/results/resample_rss.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from common import load_average, machine, save_results
from fsdd_manifest import FSDD

from audiocnn.config import compose_config, write_params
from audiocnn.data.prepare import prepare

RESULTS = Path(__file__).parent / "results" / "resample_rss.json"
REPO = Path(__file__).resolve().parent.parent

# The child's own peak is VmHWM (/proc/self/status): its `ru_maxrss` starts at the parent's
# peak (Linux carries it over the fork + exec of `subprocess`), whatever the child uses.
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
FEATURIZE = ("import resource, sys; sys.argv = ['featurize', '--params', sys.argv[1]]\n"
             "from audiocnn.config import stage_main\nfrom audiocnn.stages import featurize_stage\n"
             "stage_main(featurize_stage)\n"
             f"print('maxrss_self_kb', {HWM})\n"
             "print('maxrss_workers_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")

SERVE = """
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from omegaconf import OmegaConf
from audiocnn.config import compose_config
from audiocnn.inference.pyfunc import AudioClassifier
from audiocnn.models import build_model
from audiocnn.models.bundle import save_bundle

def rss_mb():  # this process's own peak (VmHWM), not the parent's carried-over ru_maxrss
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024

cfg = compose_config([])
classes = [str(d) for d in range(10)]
model = build_model(cfg.model, len(classes), cfg.features.n_bins, cfg.features.top_db).eval()
bundle = save_bundle(model, OmegaConf.to_container(cfg.model, resolve=True),
                     OmegaConf.to_container(cfg.features, resolve=True), classes, Path(sys.argv[1]) / "model.pt")
classifier = AudioClassifier()
classifier.load_context(SimpleNamespace(artifacts={"model.pt": str(bundle)}, model_config={}))
samples = np.random.default_rng(0).uniform(-0.5, 0.5, 10).tolist()
started = time.perf_counter()
classifier.predict(None, {"samples": samples, "sample_rate": 16000})
warm = time.perf_counter() - started
before = rss_mb()
started = time.perf_counter()
answer = classifier.predict(None, {"samples": samples, "sample_rate": 16001})
seconds = time.perf_counter() - started
print(json.dumps({"model": cfg.model.name, "warmup_16000_hz_seconds": round(warm, 3),
                  "request_seconds": round(seconds, 4), "peak_rss_mb_before": round(before),
                  "peak_rss_mb_after": round(rss_mb()), "label": answer[0]["label"]}))
"""


def odd_rate_file(path: Path, sr: int = 16001, frames: int = 1500) -> Path:
    """A 3 KB PCM_16 WAV of quiet noise at `sr`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(0).uniform(-0.3, 0.3, frames).astype(np.float32), sr, subtype="PCM_16")
    return path


def fsdd_folder(root: Path, clips: int) -> None:
    """`root/<digit>/<name>.wav`: links to the first `clips` FSDD recordings (sorted by name)."""
    for source in sorted((FSDD / "recordings").glob("*.wav"))[:clips]:
        target = root / source.name.split("_")[0] / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)


def featurize_folder(root: Path, work: Path) -> dict:
    """Prepare `root` as `data=folder`, then featurize it in a child process: time and peak RSS."""
    overrides = ["data=folder", f"data.root={root}", f"paths.prepared={work / 'prepared'}",
                 f"paths.features={work / 'features'}", f"paths.raw={work / 'raw'}", "features.device=cpu"]
    prepare(compose_config(overrides))
    params = write_params(work / "params.yaml", overrides)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FEATURIZE, str(params)], cwd=REPO, check=True, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    values = {k: int(v) for k, v in (line.split() for line in done.stdout.splitlines() if line.startswith("maxrss_"))}
    meta = json.loads((next((work / "features").iterdir()) / "store.json").read_text())
    return {"clips": meta["clips"], "skipped": len(meta["skipped"]), "seconds": round(seconds, 1),
            "peak_rss_mb_stage": round(values["maxrss_self_kb"] / 1024),
            "peak_rss_mb_worker": round(values["maxrss_workers_kb"] / 1024),
            "peak_rss_mb": round(max(values.values()) / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200, help="FSDD recordings in the folder")
    args = parser.parse_args()
    if not (FSDD / "recordings").exists():
        sys.exit(f"FSDD not found at {FSDD} (set FSDD_ROOT)")
    result = {"machine": machine(), "load_average_before": load_average(), "featurize": {}}
    with tempfile.TemporaryDirectory(prefix="resample-rss-") as tmp:
        tmp = Path(tmp)
        for case in ("without_16001_hz", "with_16001_hz"):
            root = tmp / case / "data"
            fsdd_folder(root, args.clips)
            if case == "with_16001_hz":
                odd = odd_rate_file(root / "0" / "odd_16001_hz.wav")
                result["odd_file_bytes"] = odd.stat().st_size
            result["featurize"][case] = featurize_folder(root, tmp / case / "work")
            print(case, json.dumps(result["featurize"][case]), flush=True)
        done = subprocess.run([sys.executable, "-c", SERVE, str(tmp)], cwd=REPO, check=True, capture_output=True,
                              text=True)
        result["serving_10_samples_16001_hz"] = json.loads(done.stdout.strip().splitlines()[-1])
    print("serving", json.dumps(result["serving_10_samples_16001_hz"]))
    save_results(RESULTS, result)
    plain, odd = result["featurize"]["without_16001_hz"], result["featurize"]["with_16001_hz"]
    serve = result["serving_10_samples_16001_hz"]
    print("| case | peak RSS | wall time |\n|---|---|---|")
    print(f"| featurize {plain['clips']} FSDD clips | {plain['peak_rss_mb']} MB | {plain['seconds']} s |")
    print(f"| featurize the same + one {result['odd_file_bytes']} B WAV at 16,001 Hz | {odd['peak_rss_mb']} MB "
          f"| {odd['seconds']} s |")
    print(f"| serve 10 samples at 16,001 Hz (in process) | {serve['peak_rss_mb_after']} MB "
          f"(before: {serve['peak_rss_mb_before']} MB) | {serve['request_seconds']} s |")


if __name__ == "__main__":
    main()
