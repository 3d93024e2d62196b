"""int8 ONNX files: `audiocnn export --format onnx --quantize int8 --calibration AUDIO`.

`quantize_int8(fp32, output, calibration)` turns the fp32 file `inference.export` wrote into one
with the same inputs, outputs and metadata (plus `"quantization": "int8"`), run by `audiocnn
predict` like the fp32 file. onnxruntime's own tools do the work (`onnxruntime.quantization`):
`quant_pre_process` (ONNX shape inference and constant folding: every conv's bias becomes a
constant, so every conv can be quantized), then `quantize_static` in the QDQ format: int8
weights per output channel, uint8 activations whose ranges are the min / max seen on the
calibration clips. onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into one
QLinearConv when it loads the file (integer kernels, VNNI where the CPU has it).

What is quantized and what is not (measured with a crnn_gru trained on FSDD's official split,
speech front-end, one call of 64 windows on one thread: fp32 20.5 ms, this int8 18.3 ms;
`benchmarks/int8.py` for the end-to-end figures):
- the model body's convolutions and dense layers (Conv, Gemm, MatMul) and, between them, its
  ReLUs and max-pools, so onnxruntime runs the whole conv stack in uint8 (NHWC) without
  converting back to float between layers. The convolutions with 16 or more input channels take
  a third of their fp32 time; the first one (one input channel) three times its fp32 time, but
  keeping it in fp32 costs more in layout changes at its boundary (25 ms per call), and so does
  leaving the max-pools in fp32 (26 ms);
- kept in fp32: the front-end (the CQT's convolutions and matrix products, every node before its
  first `Log`): its input spans the waveform's whole dynamic range and the log magnifies the
  rounding of quiet bins (quantized too, FSDD test accuracy fell from 0.997 to 0.930, and a clip's
  probabilities moved by up to 0.99); the recurrent layer (onnxruntime quantizes only LSTM, and only with an
  operator outside the standard ONNX domain, which the loader refuses); the peak normalisation,
  the windows and the softmax;
- dynamic quantization (`quantize_dynamic`: ConvInteger with activation ranges computed at run
  time, no calibration) was measured too: 0.2x to 0.5x of fp32's speed on these convolutions.

Calibration: at most `MAX_CALIBRATION_CLIPS` recordings spread evenly over what `--calibration`
names (a folder, files, a glob, a list; a `manifest.csv` with a `split` column gives its train
rows), each cut into chunks as `audiocnn predict` cuts them, at most `MAX_CALIBRATION_CHUNKS`
chunks in all.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from audiocnn.inference.export_format import METADATA_KEY
from audiocnn.inference.exported import _ExportedBackend

QUANTIZATIONS = ("int8",)
MAX_CALIBRATION_CLIPS = 64
MAX_CALIBRATION_CHUNKS = 64
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
CARRIED_OPS = ("Relu", "MaxPool")  # run on the uint8 values between them
OPSET = 19


def calibration_paths(calibration: str | Path | Sequence[str]) -> list[str]:
    """The audio files `calibration` names (see the module docstring), at most `MAX_CALIBRATION_CLIPS`,
    spread evenly over them."""
    from audiocnn.inference.predict import expand_inputs

    items = [str(calibration)] if isinstance(calibration, (str, Path)) else [str(c) for c in calibration]
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() == ".csv" and path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            if rows and "path" in rows[0] and "split" in rows[0]:  # a prepared manifest: its train rows
                paths += [str(path.parent / r["path"]) if not Path(r["path"]).is_absolute() else r["path"]
                          for r in rows if r["split"] == "train"]
                continue
        paths += expand_inputs([item])
    paths = [p for p in dict.fromkeys(paths) if Path(p).is_file()]
    if not paths:
        raise ValueError(f"--calibration {' '.join(items)}: no audio files there (int8 needs a few recordings "
                         "like the ones the model will score)")
    if len(paths) > MAX_CALIBRATION_CLIPS:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, MAX_CALIBRATION_CLIPS).round().astype(int)]
    return paths


class _Chunks(_ExportedBackend):
    """The (waveform, starts) inputs `audiocnn predict` gives the graph for a recording: the
    backend's own decoding and chunking (`inference.backend.Backend.windows`), recorded instead of run."""

    def feeds(self, paths: Sequence[str], most: int) -> list[dict[str, np.ndarray]]:
        self.recorded: list[dict[str, np.ndarray]] = []
        for path in paths:
            source, samples = self.source(path, None)
            for _ in self.windows(source, samples):
                if len(self.recorded) >= most:
                    return self.recorded
        return self.recorded

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        self.recorded.append({"waveform": np.ascontiguousarray(waveform, dtype=np.float32),
                              "starts": np.asarray(starts, dtype=np.int64)})
        return np.zeros((waveform.shape[0], len(starts), len(self.classes)), np.float32)


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    return Reader()


def frontend_nodes(graph) -> set[str]:
    """Names of the nodes the first `Log` depends on: the front-end (CQT, magnitudes, log)."""
    makers = {output: node for node in graph.node for output in node.output}
    log = next((node for node in graph.node if node.op_type == "Log"), None)
    seen: set[str] = set()
    stack = [log] if log is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack += [makers[name] for name in node.input if name in makers]
    return {node.name for node in graph.node if id(node) in seen}


def body_nodes(model) -> list[str]:
    """The nodes to quantize (module docstring): Conv / Gemm / MatMul, ReLU and MaxPool outside the
    front-end."""
    frontend = frontend_nodes(model.graph)
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OPS + CARRIED_OPS and node.name not in frontend]


def quantize_int8(fp32: str | Path, output: str | Path, calibration: str | Path | Sequence[str]) -> Path:
    """Write the int8 version of the fp32 audiocnn ONNX file `fp32` to `output` (not atomically: the
    caller writes to a temporary path), calibrated on the recordings `calibration` names."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    paths = calibration_paths(calibration)
    source = onnx.load(str(fp32))
    metadata = json.loads({p.key: p.value for p in source.metadata_props}[METADATA_KEY])
    feeds = _Chunks(metadata).feeds(paths, MAX_CALIBRATION_CHUNKS)[:MAX_CALIBRATION_CHUNKS]
    with tempfile.TemporaryDirectory(prefix="audiocnn-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        quantize_static(model, str(output), _reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=body_nodes(model), calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    quantized = onnx.load(str(output))
    used = {node.domain for node in quantized.graph.node} | {""}
    kept = [o for o in quantized.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del quantized.opset_import[:]
    quantized.opset_import.extend(kept)  # only the standard domain: what the loader's check reads
    # Opset 19 (the fp32 file: 17): the first whose DequantizeLinear onnx's reference evaluator
    # implements, which the loader's check runs on small constant tensors (inference.onnx_check).
    quantized = onnx.version_converter.convert_version(quantized, OPSET)
    del quantized.metadata_props[:]
    entry = quantized.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**metadata, "quantization": "int8"})
    onnx.save(quantized, str(output))
    return Path(output)
