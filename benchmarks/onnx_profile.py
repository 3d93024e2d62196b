"""Where an exported ONNX graph spends its time, per operator type: the fp32 file and its int8 version.

    .venv/bin/python benchmarks/onnx_profile.py [--rounds 10]

The default `crnn_gru` with FSDD's speech front-end (untrained: speed does not depend on the weights),
exported to ONNX and quantized to int8 (`--quantize int8`, calibrated on 64 FSDD clips), each run on one
onnxruntime thread with its profiler on, a batch of 64 chunks of a 0.5 s clip (an FSDD clip's length).
Prints, per file, each operator type's share of the time (convolutions by node: the front-end's and
each conv block's) and the total per window. What stays fp32 in the int8 file bounds what int8 can gain.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
from fsdd_manifest import FSDD
from predict import untrained_bundle


def profile(content: bytes, feed: dict, rounds: int, work: Path) -> collections.Counter:
    """Microseconds per window by operator type (a conv by its node's name) over `rounds` calls."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling, options.profile_file_prefix = True, str(work / "profile")
    session = onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    for _ in range(rounds):
        session.run(None, feed)
    spent: collections.Counter = collections.Counter()
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            name = event["name"].removesuffix("_kernel_time")
            parts = name.split("/")  # e.g. /backbone/backbone.1/backbone.1.0/Conv: the conv block
            key = f"{op} {parts[2] if len(parts) > 3 else parts[1]}" if op in ("Conv", "QLinearConv") else op
            spent[key] += event["dur"] / rounds / feed["waveform"].shape[0]
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    from audiocnn.inference.export import export_model
    from audiocnn.inference.onnx_check import check_onnx

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        untrained_bundle(work / "model")
        calibration = [str(p) for p in sorted((FSDD / "recordings").glob("*.wav"))[:64]]
        files = {"fp32": export_model(work / "model", "onnx", work / "model.onnx"),
                 "int8": export_model(work / "model", "onnx", work / "model-int8.onnx", quantize="int8",
                                      calibration=calibration)}
        totals = {}
        for kind, path in files.items():
            content, metadata = check_onnx(path)
            hop, margin = int(metadata["features"]["hop_length"]), int(metadata["margin_samples"])
            rng = np.random.default_rng(0)
            feed = {"waveform": rng.uniform(-0.1, 0.1, (64, 31 * hop + 2 * margin)).astype(np.float32),
                    "starts": np.zeros(1, np.int64)}
            spent = profile(content, feed, args.rounds, work)
            totals[kind] = sum(spent.values())
            print(f"{kind}: {totals[kind]:.0f} us per window (one thread)")
            for key, value in spent.most_common(14):
                print(f"  {key:<40} {value:7.1f} us  {100 * value / totals[kind]:5.1f}%")
        print(f"int8 / fp32 time: {totals['int8'] / totals['fp32']:.2f}")


if __name__ == "__main__":
    main()
