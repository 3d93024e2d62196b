"""End-to-end `predict` throughput: PyTorch eager, TorchScript, onnxruntime and its int8 file, in one run.

    .venv/bin/python benchmarks/predict.py                # FSDD folder + a 1-hour file
    .venv/bin/python benchmarks/predict.py --clips 300 --hours 0.25
    python benchmarks/predict.py --cuda --results OUT.json   # also PyTorch eager on the GPU

The model is the default `crnn_gru` with FSDD's speech front-end (`data=fsdd`: 8 kHz, hop
128, 84 bins), randomly initialised: throughput does not depend on the weights. Inputs:
`--clips` FSDD recordings (a folder), and one `--hours`-long 8 kHz WAV made of FSDD
recordings back to back. Each (backend, input) runs `audiocnn predict` in a fresh child
process (after one warm-up file) and reports audio-seconds per second, the multiple of real
time and the child's peak RSS. For the eager backend, where the time goes, from one more run
of its own with the decoding and CQT calls timed from inside: decode + resample, the CQT, and
the rest (windows, model, vote). Writes
benchmarks/results/predict.json and prints last `fsdd_x=<n> hour_x=<n> hour_rss_mb=<n>` (the
faster fp32 backend, eager or ONNX, per input).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf
from common import load_average, machine, save_results
from fsdd_manifest import FSDD

RESULTS = Path(__file__).parent / "results" / "predict.json"
REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
from audiocnn import load_model
from audiocnn.inference.predict import expand_inputs
model = load_model(sys.argv[1], device=sys.argv[3], trust_code=True)  # files this benchmark exported itself
paths = expand_inputs([sys.argv[2]])
model.predict(paths[:1])  # warm-up (first calls allocate and pick kernels)
started = time.perf_counter()
records = model.predict(paths)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "audio_seconds": sum(r["duration"] for r in records),
                  "files": len(records), "errors": sum("error" in r for r in records),
                  # VmHWM: this process's own peak (ru_maxrss of a subprocess starts at its parent's)
                  "peak_rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024}))
"""

PARTS = """
import json, sys, time
import audiocnn.inference.backend as backend
from audiocnn.inference.predict import expand_inputs
from audiocnn.inference.predictor import Predictor
spent = {"decode_resample_s": 0.0, "cqt_s": 0.0}
def timed(function, key):  # time spent inside `function`, added to spent[key]
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - started
    return wrapper
backend.read_audio_if = timed(backend.read_audio_if, "decode_resample_s")  # whole recordings
backend.read_segment = timed(backend.read_segment, "decode_resample_s")  # a long one's stretches
predictor = Predictor.load(sys.argv[1])
predictor.scorer.chunk_frames = timed(predictor.scorer.chunk_frames, "cqt_s")  # every CQT call of the run
paths = expand_inputs([sys.argv[2]])
list(predictor.score(paths[:1]))  # warm-up, as the timed runs
spent.update(decode_resample_s=0.0, cqt_s=0.0)
started = time.perf_counter()
list(predictor.score(paths))
print(json.dumps({**spent, "total_s": time.perf_counter() - started}))
"""


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter (its peak RSS is its own); its JSON answer."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_inputs(work: Path, clips: int, hours: float) -> dict[str, Path]:
    recordings = sorted((FSDD / "recordings").glob("*.wav"))[:clips]
    folder = work / "fsdd"
    folder.mkdir()
    for path in recordings:
        (folder / path.name).symlink_to(path)
    inputs = {f"FSDD folder ({len(recordings)} clips)": folder}
    if hours > 0:
        long = work / "long" / "one_hour.wav"
        long.parent.mkdir()
        target = int(hours * 3600 * 8000)
        with sf.SoundFile(long, "w", samplerate=8000, channels=1, subtype="PCM_16") as out:
            written, index = 0, 0
            while written < target:
                wave, _ = sf.read(recordings[index % len(recordings)], dtype="float32")
                wave = wave[: target - written]
                out.write(wave)
                written, index = written + len(wave), index + 1
        inputs[f"one {hours:g}-hour file"] = long.parent
    return inputs


def untrained_bundle(folder: Path) -> Path:
    """`folder/model.pt`: the default `crnn_gru` with FSDD's speech front-end and 10 classes, weights drawn from
    seed 0 (speed does not depend on them); returns `folder`."""
    import torch
    from omegaconf import OmegaConf

    from audiocnn.config import compose_config
    from audiocnn.models import build_model
    from audiocnn.models.bundle import save_bundle

    torch.manual_seed(0)
    cfg = compose_config(["data=fsdd"])
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), 10, cfg.features.n_bins,
                        cfg.features.top_db).eval()
    save_bundle(model, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features),
                [str(d) for d in range(10)], folder / "model.pt")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--cuda", action="store_true", help="also PyTorch eager on the CUDA GPU")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    from audiocnn.inference.export import export_model

    before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        untrained_bundle(work / "model")
        inputs = make_inputs(work, args.clips, args.hours)
        calibration = sorted((FSDD / "recordings").glob("*.wav"))[:64]  # the int8 file's activation ranges
        sources = {"PyTorch eager": str(work / "model"),
                   "TorchScript": str(export_model(work / "model", "torchscript", work / "model.ts")),
                   "onnxruntime": str(export_model(work / "model", "onnx", work / "model.onnx")),
                   "onnxruntime int8": str(export_model(work / "model", "onnx", work / "model-int8.onnx",
                                                        quantize="int8", calibration=[str(p) for p in calibration]))}
        devices = {backend: "cpu" for backend in sources}
        if args.cuda:
            sources["PyTorch eager, CUDA"], devices["PyTorch eager, CUDA"] = sources["PyTorch eager"], "cuda"
        rows = []
        for input_name, folder in inputs.items():
            parts = child(PARTS, sources["PyTorch eager"], str(folder))
            for backend, source in sources.items():
                run = child(CHILD, source, str(folder), devices[backend])
                rss = round(run["peak_rss_mb"], 1)
                speed = run["audio_seconds"] / run["seconds"]
                row = {"input": input_name, "backend": backend, "files": run["files"], "errors": run["errors"],
                       "audio_seconds": round(run["audio_seconds"], 1), "seconds": round(run["seconds"], 2),
                       "audio_seconds_per_second": round(speed, 1), "peak_rss_mb": rss}
                if backend == "PyTorch eager":  # one instrumented run of its own (`PARTS`)
                    row["time_split_s"] = {"decode_resample": round(parts["decode_resample_s"], 2),
                                           "cqt": round(parts["cqt_s"], 2),
                                           "windows_model_and_vote": round(parts["total_s"] - parts["decode_resample_s"]
                                                                           - parts["cqt_s"], 2),
                                           "total": round(parts["total_s"], 2)}
                rows.append(row)
                print(f"{input_name:<28} {backend:<14} {speed:9.0f}x real time  {rss:7.0f} MB peak RSS")
    save_results(args.results, {"machine": machine(), "load_average_before": before, "model": "crnn_gru, data=fsdd "
                           "(speech front-end), untrained", "rows": rows,
                           "command": "benchmarks/predict.py " + " ".join(sys.argv[1:])})
    # The one line: the fastest fp32 backend (eager or ONNX) per input, and its peak RSS on the long file.
    fp32 = [r for r in rows if r["backend"] in ("PyTorch eager", "onnxruntime")]
    best = {name: max((r for r in fp32 if r["input"] == name), key=lambda r: r["audio_seconds_per_second"])
            for name in inputs}
    fsdd, hour = (best[name] for name in inputs) if len(best) == 2 else (next(iter(best.values())), None)
    print(f"fsdd_x={fsdd['audio_seconds_per_second']:.0f} hour_x={hour['audio_seconds_per_second'] if hour else 0:.0f} "
          f"hour_rss_mb={hour['peak_rss_mb'] if hour else 0:.0f}")


if __name__ == "__main__":
    main()
