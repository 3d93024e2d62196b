"""An ONNX file is checked before onnxruntime sees it: audiocnn runs only graphs its own exporter
could have written, and knows every tensor's size before the first run.

An ONNX file cannot run Python, but its graph decides what onnxruntime allocates: a 701-byte file
whose `ConstantOfShape` node asks for [50000, 50000] floats takes 10 GB, and metadata saying
`features.sr=2e8` makes the caller resample a 2 s clip to 400 M samples. `check_onnx(path)` refuses
such a file with one `BundleError` line, before a session exists:

1. the file: at most `budget.MAX_FILE_BYTES`, a ModelProto, no external data (paths to other
   files), no sparse initializers, no local functions, at most `MAX_NODES` nodes, operators of the
   default domain only, at an opset the exporter writes (`OPSETS`);
2. the metadata (`check_metadata`, also for TorchScript): the export format, classes and features
   checked by `features.budget` as a `model.pt`'s are, the chunk margin within what the
   front-end's kernels need;
3. the interface: inputs `waveform` (batch, samples) float and `starts` (windows,) int64, output
   `window_probabilities` (and an events model's `frame_probabilities`: what `inference.export` writes);
4. every node's operator in `ALLOWED_OPS`: the ones audiocnn's exporter writes for every model
   of `conf/model` (tests/test_onnx_check.py exports them and compares); none with a subgraph;
5. the sizes (`GraphCheck`): with the inputs fixed to the largest and the smallest chunk the
   callers send (`inference.chunks`: `features.chunk_seconds` of frames and `CHUNK_WINDOWS`
   windows, or one frame and one window), every node's outputs get their shapes from ONNX shape
   inference, node by node; the small integer tensors that shapes are computed from (Shape,
   Gather, Concat, Range, ...) are evaluated with onnx's reference evaluator, once their size is
   known to be small. A shape that cannot be known without the waveform's values is refused, so is
   a tensor above `MAX_TENSOR_BYTES` or all of them together above `MAX_GRAPH_BYTES` (an upper
   bound of onnxruntime's peak, which frees and reuses buffers), and an output that does not give
   one probability per class.

Why a check and not a memory cap (docs/using-a-model.md): a cap on onnxruntime's arena is one
setting for the whole process, must be set before the first session, holds only for the
allocations that go through the arena, and turns an attack into a failure half-way through a
folder; a checked graph is refused at load, whatever the machine, and costs ~0.1 s. A hash of the
graph would prove nothing: an attacker can compute it too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from audiocnn.features import budget
from audiocnn.inference.chunks import chunk_limits
from audiocnn.inference.export_format import CHUNK_WINDOWS, EXPORT_FORMAT, INPUTS, METADATA_KEY, output_names
from audiocnn.errors import BundleError
from audiocnn.data.task import task_problem

ALLOWED_OPS = frozenset({
    # what `audiocnn export` writes for the models of conf/model (every freq_pool and temporal_pool,
    # pcen / bin_norm, on-the-fly CQT kernels, test-time views, head_hidden, avg / max pooling; Sigmoid:
    # a multi-label model)
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "Div", "Einsum", "Exp", "GRU", "Gather", "Gemm", "GreaterOrEqual", "Identity", "LSTM", "Log", "MatMul",
    "MaxPool", "Mul", "Neg", "Pad", "Pow", "Range", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu",
    "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where",
    # written by the exporter of the previous graph for the same modules (remainder, comparisons)
    "Equal", "Mod", "Not",
    # `audiocnn export --quantize int8` (QDQ format: onnxruntime fuses them into int8 kernels)
    "DequantizeLinear", "QuantizeLinear",
})
OPSETS = range(13, 22)  # `inference.export` writes opset 17
DOMAINS = ("", "ai.onnx")
MAX_NODES = 10_000  # audiocnn's graphs: 330 to 500
MAX_TENSOR_BYTES = 512 << 20  # one intermediate tensor (ours: 20 MB at the largest chunk)
MAX_GRAPH_BYTES = 2 << 30  # all intermediates of one run together (ours: 130 to 600 MB at the largest chunk)
MAX_METADATA_BYTES = 1 << 20
VALUE_ELEMENTS = 1 << 16  # integer tensors up to this size are evaluated (the shape arithmetic)
WAVEFORM, STARTS = "waveform", "starts"


def refuse(where: Any, message: str) -> BundleError:
    return BundleError(f"{where}: {message}")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_metadata(metadata: Any, where: Any) -> dict:
    """The audiocnn metadata of an exported file, checked as a `model.pt`'s settings are (`features.budget`):
    `format`, `classes`, `features`, `margin_samples`, `task` and `thresholds`. Returns it; `BundleError` naming the key otherwise."""
    if not isinstance(metadata, dict):
        raise refuse(where, f"its {_key()} metadata is {type(metadata).__name__}, not a mapping")
    if metadata.get("format") != EXPORT_FORMAT or "margin_samples" not in metadata:
        raise refuse(where, "exported by an older audiocnn (its graph takes whole recordings); export it again")
    problem = budget.classes_problem(metadata.get("classes")) or budget.features_problem(metadata.get("features"))
    if problem:
        raise refuse(where, problem)
    problem = task_problem(metadata, len(metadata["classes"]))
    if problem:
        raise refuse(where, problem)
    features, margin = metadata["features"], metadata["margin_samples"]
    most = budget.margin_bound(features)
    if (isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin <= most
            or margin % features["hop_length"]):
        raise refuse(where, f"margin_samples={margin!r}: must be a whole number of hops (features.hop_length="
                            f"{features['hop_length']}) from 0 to {most:,}, what these features' kernels need at most")
    return metadata


def _key() -> str:
    return repr(METADATA_KEY)


def chunk_shapes(metadata: dict) -> list[tuple[int, int]]:
    """(samples, windows) of the largest and the smallest chunk `inference.chunks` cuts for this model."""
    margin = int(metadata["margin_samples"])
    return [(chunk_limits(metadata["features"], margin)[1], CHUNK_WINDOWS),
            (int(metadata["features"]["hop_length"]) + 2 * margin, 1)]


def check_onnx(path: Path) -> tuple[bytes, dict]:
    """(the file's bytes, its checked metadata) for the ONNX file at `path`; `BundleError` (one line)
    for anything `audiocnn export` does not write (see the module docstring). The bytes are what the
    session is made from: the file is read once."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise refuse(path, "no such file" if not path.exists() else "not a file")
    size = path.stat().st_size
    if size > budget.MAX_FILE_BYTES:
        raise refuse(path, f"{budget.human(size)}; an ONNX model audiocnn exports is at most "
                           f"{budget.human(budget.MAX_FILE_BYTES)}")
    content = path.read_bytes()
    try:
        model = onnx.load_model_from_string(content)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends: not ONNX at all
        raise refuse(path, f"not an ONNX file ({_first_line(error)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise refuse(path, "not an ONNX model (no graph)")
    metadata = _metadata(model, path)
    check_structure(model, path, metadata)
    GraphCheck(model, path).check(metadata)
    return content, metadata


def _metadata(model, where) -> dict:
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise refuse(where, f"not an ONNX file exported by audiocnn (no {METADATA_KEY!r} metadata)")
    text = props[METADATA_KEY]
    if len(text) > MAX_METADATA_BYTES:
        raise refuse(where, f"its {METADATA_KEY!r} metadata is {len(text):,} characters; at most "
                            f"{MAX_METADATA_BYTES:,}")
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise refuse(where, f"its {METADATA_KEY!r} metadata is not JSON ({_first_line(error)})") from None
    return check_metadata(metadata, where)


def check_structure(model, where, metadata: dict) -> None:
    """Steps 1, 3 and 4 of the module docstring: what the file is made of, without any size."""
    import onnx
    from onnx import AttributeProto, TensorProto

    graph = model.graph
    for opset in model.opset_import:
        if opset.domain not in DOMAINS:
            raise refuse(where, f"uses the operator domain {opset.domain!r}: custom operators are not audiocnn's")
        if opset.version not in OPSETS:
            raise refuse(where, f"opset {opset.version}; audiocnn exports opset 17 (reads {OPSETS.start} to "
                                f"{OPSETS.stop - 1})")
    if model.functions:
        raise refuse(where, f"defines functions ({model.functions[0].name!r}): not a graph audiocnn exports")
    if graph.sparse_initializer:
        raise refuse(where, "holds sparse initializers: not a graph audiocnn exports")
    if len(graph.node) > MAX_NODES:
        raise refuse(where, f"{len(graph.node):,} nodes; audiocnn's graphs have at most {MAX_NODES:,}")
    for tensor in graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise refuse(where, f"initializer {tensor.name!r} is stored in another file: not read")
    for node in graph.node:
        if node.domain not in DOMAINS:
            raise refuse(where, f"node {node.name or node.op_type!r}: operator {node.domain}.{node.op_type} is "
                                "a custom operator, not one audiocnn exports")
        if node.op_type not in ALLOWED_OPS:
            raise refuse(where, f"node {node.name or node.op_type!r}: operator {node.op_type} is not one audiocnn "
                                "exports")
        for attribute in node.attribute:
            if attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.SPARSE_TENSOR,
                                  AttributeProto.SPARSE_TENSORS):
                raise refuse(where, f"node {node.name or node.op_type!r}: attribute {attribute.name} holds a "
                                    "subgraph or a sparse tensor")
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    expected = {WAVEFORM: (TensorProto.FLOAT, 2), STARTS: (TensorProto.INT64, 1)}
    outputs = output_names(metadata)
    if [i.name for i in inputs] != INPUTS or [o.name for o in graph.output] != outputs:
        raise refuse(where, f"inputs {[i.name for i in inputs]}, outputs {[o.name for o in graph.output]}; an "
                            f"audiocnn export of this model takes {INPUTS} and gives {outputs}")
    for value in inputs:
        kind = value.type.tensor_type
        if (kind.elem_type, len(kind.shape.dim)) != expected[value.name]:
            raise refuse(where, f"input {value.name!r}: {onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)} of "
                                f"rank {len(kind.shape.dim)}; an audiocnn export takes "
                                f"{'float32 (batch, samples)' if value.name == WAVEFORM else 'int64 (windows,)'}")
    try:
        onnx.checker.check_model(model)  # topological order, attributes, initializers' data sizes
    except Exception as error:  # noqa: BLE001 - onnx's ValidationError and friends
        raise refuse(where, f"not a valid ONNX graph ({_first_line(error)})") from None


class GraphCheck:
    """Every tensor's shape for given input shapes, before anything runs (step 5 of the module docstring)."""

    def __init__(self, model, where: Any):
        self.model, self.where = model, where

    def check(self, metadata: dict) -> list[int]:
        """Bytes of all intermediates at each of `chunk_shapes(metadata)`; `BundleError` on a shape not
        known from the inputs' shapes, on a tensor or a total above the limits, or on an output that
        is not (1, windows, classes)."""
        totals = []
        for samples, windows in chunk_shapes(metadata):
            shapes, total = self.shapes(samples, windows)
            n = len(metadata["classes"])
            wanted = [(1, windows, n)]
            if metadata.get("events"):  # its frame outputs: n_out = window_frames // time_stride frames a window
                n_out = int(metadata["features"]["window_frames"]) // int(metadata["events"]["time_stride"])
                wanted.append((1, windows, n_out, n))
            for value, shape in zip(self.model.graph.output, wanted):
                if shapes[value.name] != shape:
                    raise refuse(self.where, f"for a chunk of {samples:,} samples and {windows} windows its output "
                                             f"{value.name!r} is {list(shapes[value.name])}; it must be {list(shape)}")
            totals.append(total)
        return totals

    def shapes(self, samples: int, windows: int) -> tuple[dict[str, tuple[int, ...]], int]:
        """({tensor name: shape}, bytes of every node output together) for inputs waveform (1, samples)
        and starts (windows,)."""
        from onnx import TensorProto, helper, numpy_helper, shape_inference
        from onnx.reference import ReferenceEvaluator

        graph = self.model.graph
        opsets = list(self.model.opset_import)
        shapes: dict[str, tuple[int, ...]] = {WAVEFORM: (1, samples), STARTS: (windows,)}
        types: dict[str, int] = {WAVEFORM: TensorProto.FLOAT, STARTS: TensorProto.INT64}
        values: dict[str, np.ndarray] = {}
        for tensor in graph.initializer:
            shapes[tensor.name], types[tensor.name] = tuple(tensor.dims), tensor.data_type
            if math.prod(tensor.dims) <= VALUE_ELEMENTS:
                values[tensor.name] = numpy_helper.to_array(tensor)
        total = 0
        for node in graph.node:
            label = f"node {node.name or node.op_type!r} ({node.op_type})"
            inputs = [name for name in node.input if name]
            outputs = [name for name in node.output if name]
            unknown = [name for name in inputs if name not in shapes]
            if unknown:
                raise refuse(self.where, f"{label} reads {unknown[0]!r}, which no node before it makes")
            if node.op_type == "Shape":  # its value is the input's shape: known without the input's values
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), None)
                values[outputs[0]] = np.array(shapes[inputs[0]][start:end], dtype=np.int64)
                shapes[outputs[0]], types[outputs[0]] = values[outputs[0]].shape, TensorProto.INT64
                continue
            single = helper.make_model(
                helper.make_graph(
                    [node], "node",
                    [helper.make_tensor_value_info(n, types[n], shapes[n]) for n in dict.fromkeys(inputs)
                     if n not in values],
                    [helper.make_empty_tensor_value_info(n) for n in outputs],
                    [numpy_helper.from_array(values[n], n) for n in dict.fromkeys(inputs) if n in values]),
                opset_imports=opsets, ir_version=self.model.ir_version)
            try:
                inferred = shape_inference.infer_shapes(single, strict_mode=True, data_prop=True)
            except Exception as error:  # noqa: BLE001 - onnx's InferenceError: inputs the operator refuses
                raise refuse(self.where, f"{label}: {_first_line(error)}") from None
            found = {v.name: v.type.tensor_type for v in (*inferred.graph.output, *inferred.graph.value_info)}
            for name in outputs:
                kind = found.get(name)
                known = kind is not None and kind.HasField("shape")
                if not known or not all(d.HasField("dim_value") for d in kind.shape.dim):
                    raise refuse(self.where, f"{label}: the shape of {name!r} depends on the waveform's values, not "
                                             "only on its length: not a graph audiocnn exports")
                if kind.elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
                    raise refuse(self.where, f"{label}: {name!r} holds no numbers")
                shapes[name], types[name] = tuple(d.dim_value for d in kind.shape.dim), kind.elem_type
                size = math.prod(shapes[name]) * np.dtype(helper.tensor_dtype_to_np_dtype(kind.elem_type)).itemsize
                if size > MAX_TENSOR_BYTES:
                    raise refuse(self.where, f"{label}: {name!r} would be {list(shapes[name])} "
                                             f"({budget.human(size)}) for a chunk of {samples:,} samples; at most "
                                             f"{budget.human(MAX_TENSOR_BYTES)} per tensor")
                total += size
            if total > MAX_GRAPH_BYTES:
                raise refuse(self.where, f"its tensors take more than {budget.human(MAX_GRAPH_BYTES)} for a chunk of "
                                         f"{samples:,} samples ({label} and those before it)")
            if all(n in values for n in inputs) and sum(math.prod(shapes[n]) for n in outputs) <= VALUE_ELEMENTS:
                try:
                    results = ReferenceEvaluator(single).run(None, {})
                except Exception as error:  # noqa: BLE001 - the reference evaluator's own refusal
                    raise refuse(self.where, f"{label}: {_first_line(error)}") from None
                for name, result in zip(node.output, results):
                    if name:
                        values[name] = np.asarray(result)
                        shapes[name] = values[name].shape
        return shapes, total


def session_threads() -> tuple[int, int]:
    """(calls run side by side, threads each call uses) on the cores this process may use: up to 4 calls
    of `cores // calls` threads. On 2 cores, two calls of one thread each scored faster than one call on
    both (the GRU, the pooling and the small operators do not spread over threads, and reading the next
    files overlaps scoring; benchmarks/onnx_threads.py, benchmarks/predict.py, docs/results.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no affinity
    calls = max(1, min(4, cores))
    return calls, max(1, cores // calls)


def open_session(content: bytes, where: Any, threads: int = 0):
    """An onnxruntime session (CPU) for checked `content`, each call on `threads` threads (0: onnxruntime's
    choice); onnxruntime's own errors as one `BundleError` line. Its log shows errors only (its warnings
    would break the one-line answer)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's Fail, InvalidGraph, InvalidArgument, ...
        raise refuse(where, f"onnxruntime cannot load it ({_first_line(error)})") from None
