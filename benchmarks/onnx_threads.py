"""How onnxruntime should use the cores for `audiocnn predict`: one call on all threads, or calls side by side.

    .venv/bin/python benchmarks/onnx_threads.py [--rounds 20]

The default `crnn_gru` with FSDD's speech front-end (untrained: speed does not depend on the weights),
exported to ONNX; one batch of 64 one-window chunks (1 s of 8 kHz audio each, with the front-end's
margins). Prints the time per window of: one call with onnxruntime's default threads; one call on one
thread; and one single-threaded call per core run side by side from Python threads (what
`inference.onnx_check.session_threads` chooses and `inference.backend.Backend` does).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from predict import untrained_bundle


def per_window_ms(session, feed: dict, rounds: int, side_by_side: int = 1) -> float:
    """Milliseconds per window: `rounds` calls in each of `side_by_side` threads at once."""
    windows = feed["waveform"].shape[0] * rounds * side_by_side
    with ThreadPoolExecutor(side_by_side) as pool:
        list(pool.map(lambda _: session.run(None, feed), range(side_by_side)))  # warm-up
        started = time.perf_counter()
        list(pool.map(lambda _: [session.run(None, feed) for _ in range(rounds)], range(side_by_side)))
        return (time.perf_counter() - started) / windows * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    import onnxruntime

    from audiocnn.inference.export import export_model
    from audiocnn.inference.onnx_check import check_onnx, session_threads

    calls = session_threads()[0]
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_model(untrained_bundle(Path(tmp) / "model"), "onnx", Path(tmp) / "model.onnx")
        content, metadata = check_onnx(onnx)
    features, margin = metadata["features"], int(metadata["margin_samples"])
    hop, window = int(features["hop_length"]), int(features["window_frames"])
    rng = np.random.default_rng(0)
    feed = {"waveform": rng.uniform(-0.1, 0.1, (64, window * hop + 2 * margin)).astype(np.float32),
            "starts": np.zeros(1, np.int64)}

    def session(threads: int):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        return onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])

    print(f"session_threads() = {session_threads()} (calls side by side, threads per call)")
    print(f"one call, onnxruntime's default threads: {per_window_ms(session(0), feed, args.rounds):.3f} ms per window")
    one = session(1)
    print(f"one call, one thread:                    {per_window_ms(one, feed, args.rounds):.3f} ms per window")
    print(f"{calls} calls side by side, one thread each:  "
          f"{per_window_ms(one, feed, args.rounds, side_by_side=calls):.3f} ms per window")


if __name__ == "__main__":
    main()
