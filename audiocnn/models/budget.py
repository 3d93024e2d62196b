"""The resource budget of a model and of a model file, checked before anything is allocated (the
front-end's settings and the class names: `features.budget`).

3. The model (`model_cost`): built on the `meta` device (parameters with shapes and no storage:
   nothing is allocated, whatever the sizes) after every integer argument is below
   `MAX_ARGUMENT` and every list shorter than `MAX_ITEMS`; then its parameter count, and one
   window's multiply-adds and largest activation in closed form from the block specs and layer
   sizes (`_window_cost`; equal to what `models.summary` measures), plus PCEN's (frames x frames)
   smoothing matrix, which no layer's output shows.
4. The stored tensors (`stored_tensors`): a `model.pt` is a zip archive; its directory gives
   every entry's declared size and its size in the file before anything is inflated (a 7 MB
   archive can inflate to 6 GB of zeros). Refused: a pickle above `MAX_PICKLE_BYTES`, declared
   sizes above `MAX_FILE_BYTES` in all, an entry that inflates more than `MAX_RATIO` times
   (tensors torch.save writes are stored, not compressed). The caller compares the entries with
   what the pickle describes and what the architecture needs (`models.bundle`).
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from audiocnn.features.budget import MAX_FILE_BYTES, human, show

MAX_ARGUMENT = 1 << 16  # any integer argument of a model (channels, hidden_size, kernel, ...)
MAX_ITEMS = 64  # any list argument of a model (blocks, head_hidden, ...), and num_layers
COUNT_ARGUMENTS = ("num_layers",)  # integers that count layers: each is a module to build
MAX_PARAMETERS = 1 << 25  # 128 MB of float32 weights (the models of conf/model: 62 k to 450 k)
MAX_WINDOW_MACS = 1 << 32  # multiply-adds for one window (conf/model: 7 M to 136 M at the defaults)
MAX_ACTIVATION = 1 << 22  # values of the largest layer output for one window (conf/model: 172 k)

MAX_PICKLE_BYTES = 8 << 20  # a model.pt's pickle (data.pkl: 5 kB for a bundle)
MAX_RATIO = 100  # how much an entry above 1 MiB may inflate (torch.save stores entries: 1)


# -- 3. the model -----------------------------------------------------------------------------------

@dataclass
class ModelCost:
    """What a model needs, from its architecture alone (built on the meta device)."""
    parameters: int = 0
    state: dict[str, tuple[tuple[int, ...], Any]] = field(default_factory=dict)  # key -> (shape, dtype)
    state_bytes: int = 0
    macs: int = 0
    activation: int = 0


def _arguments_problem(value: Any, where: str) -> str | None:
    """Integers at most MAX_ARGUMENT and lists of at most MAX_ITEMS, anywhere in `value`: bounds the
    work of building a model (on any device) before its size is known."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            problem = _arguments_problem(item, f"{where}.{key}")
            if key in COUNT_ARGUMENTS and isinstance(item, int) and item > MAX_ITEMS:
                problem = f"{where}.{key}={item}: at most {MAX_ITEMS}"
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            return f"{where}: {len(value):,} items; at most {MAX_ITEMS}"
        for index, item in enumerate(value):
            problem = _arguments_problem(item, f"{where}[{index}]")
            if problem:
                return problem
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ARGUMENT:
        return f"{where}={value}: at most {MAX_ARGUMENT:,}"
    return None


def _setting(name: str, spec: Mapping, n_classes: int) -> str:
    """The setting behind a module of an audiocnn model, for a message: 'rnn' -> 'model.hidden_size=8192'."""
    parts = name.split(".")
    if parts[0] == "backbone" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= 1:
        index = int(parts[1]) - 1
        blocks = spec.get("blocks") or []
        channels = blocks[index].get("channels") if index < len(blocks) and isinstance(blocks[index], Mapping) else None
        return f"model.blocks[{index}].channels={show(channels)}"
    if parts[0] == "rnn":
        return f"model.hidden_size={show(spec.get('hidden_size', 128))}"
    if parts[0] == "head" and len(parts) > 1 and parts[1] == "fc":
        return f"classes ({n_classes})"
    if parts[0] == "head":
        return f"model.head_hidden={show(spec.get('head_hidden'))}"
    if parts[0] in ("freq_pool", "attention", "grid", "input_norm", "event_pool"):
        key = {"freq_pool": "freq_pool", "attention": "temporal_pool", "grid": "grid_size",
               "input_norm": "norm", "event_pool": "event_pool"}[parts[0]]
        return f"model.{key}={show(spec.get(key))}"
    return "model"


def model_cost(model_class: type, spec: Mapping, n_classes: int, n_bins: int, window_frames: int,
               top_db: float | None = None, features: Mapping | None = None) -> tuple[str | None, ModelCost | None]:
    """(problem, cost) of `model_class(n_classes, n_bins, top_db, **arguments)`, `spec` its config
    (`_target_` and descriptive keys are skipped), with the front-end `features` (checked settings)
    give it (`models.build_frontend`: its kernels are in `cost.state`). Built on the meta
    device: nothing is allocated. `problem` starts with `does not build:` when the arguments do not
    make a model, else with the setting that makes it too big."""
    import torch

    from audiocnn.models import DESCRIPTIVE_KEYS, build_frontend

    arguments = {k: v for k, v in spec.items() if k not in (*DESCRIPTIVE_KEYS, "_target_")}
    problem = _arguments_problem(arguments, "model")
    if problem:
        return problem, None
    try:
        with torch.device("meta"):
            frontend = build_frontend(features) if features is not None else None
            model = model_class(n_classes=n_classes, n_bins=n_bins, top_db=top_db, frontend=frontend, **arguments)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, OverflowError) as error:
        return f"does not build: {str(error).splitlines()[0] if str(error) else type(error).__name__}", None
    cost = ModelCost()
    cost.state = {key: (tuple(t.shape), t.dtype) for key, t in model.state_dict().items()}
    cost.state_bytes = sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size()
                           for shape, dtype in cost.state.values())
    cost.parameters = sum(p.numel() for p in model.parameters())
    if cost.parameters > MAX_PARAMETERS:
        parts: dict[str, int] = {}
        for name, parameter in model.named_parameters():
            part = ".".join(name.split(".")[:2]) if name.startswith("backbone.") else name.split(".")[0]
            parts[part] = parts.get(part, 0) + parameter.numel()
        largest = max(parts, key=parts.get)
        return (f"{_setting(largest, spec, n_classes)}: the model would have {cost.parameters:,} parameters "
                f"({human(4 * cost.parameters)}, {parts[largest]:,} in {largest}); at most {MAX_PARAMETERS:,}"), cost
    norm = getattr(model, "input_norm", None)
    if type(norm).__name__ == "PCEN":  # its (bins, frames, frames) smoother is no layer's output
        smoother = (n_bins if norm.trainable else 1) * window_frames ** 2
        if smoother > MAX_ACTIVATION:
            return (f"model.norm.type=pcen: its smoothing matrix for features.window_frames={window_frames} holds "
                    f"{smoother:,} values{' (one per bin: trainable)' if norm.trainable else ''}; at most "
                    f"{MAX_ACTIVATION:,}"), cost
    try:
        cost.macs, cost.activation, macs_at, activation_at, shape = _window_cost(model, n_bins, window_frames)
    except ValueError as error:  # a conv stack that collapses an axis (ShapeError), for one window
        return (f"does not build: {str(error).splitlines()[0]} (one window: {n_bins} bins x {window_frames} "
                "frames)"), cost
    if cost.macs > MAX_WINDOW_MACS:
        return (f"{_setting(macs_at, spec, n_classes)}: one window of {n_bins} x {window_frames} takes "
                f"{cost.macs:,} multiply-adds (most in {macs_at}); at most {MAX_WINDOW_MACS:,}"), cost
    if cost.activation > MAX_ACTIVATION:
        return (f"{_setting(activation_at, spec, n_classes)}: one window of {n_bins} x {window_frames} makes "
                f"{activation_at} output {' x '.join(map(str, shape))} = {cost.activation:,} values; "
                f"at most {MAX_ACTIVATION:,}"), cost
    return None, cost


def _window_cost(model, n_bins: int, window: int) -> tuple[int, int, str, str, tuple[int, ...]]:
    """(multiply-adds, largest output in values, the module doing most of the work, the module
    with that output, its shape) for one window `(1, 1, n_bins, window)`, in closed form: the conv
    stack from its block specs (`BlockSpec.layer_sizes`, the arithmetic the layers follow), the
    recurrent and linear layers from their sizes. (A forward pass on meta tensors would give the
    same, but batch norm on meta imports torch's compiler: seconds.)"""
    from torch import nn

    from audiocnn.models.blocks import trace_shapes

    work: dict[str, int] = {}
    outputs: dict[str, tuple[int, ...]] = {"input": (1, n_bins, window)}
    specs = getattr(model, "specs", [])
    trace_shapes(specs, (n_bins, window))  # ShapeError (a ValueError) naming the block that collapses
    size, channels = (n_bins, window), 1
    for index, spec in enumerate(specs):
        name = f"backbone.{index + 1}"
        layers = spec.layer_sizes(size)
        convs = [layer for layer in layers if layer[0] == "conv"]
        for number, (_, kernel, _, _, out) in enumerate(convs):
            inputs = channels if number == 0 else spec.channels
            work[name] = work.get(name, 0) + spec.channels * out[0] * out[1] * inputs * kernel[0] * kernel[1]
            outputs[name] = max(outputs.get(name, (0,)), (spec.channels, *out), key=math.prod)
        if spec.type == "residual" and (channels != spec.channels or spec.stride != (1, 1)):
            out = convs[0][4]
            work[name] += spec.channels * out[0] * out[1] * channels  # the 1x1 shortcut
        size, channels = layers[-1][4], spec.channels
    bins, steps = size
    pool = getattr(model, "freq_pool", None)
    if pool is not None and hasattr(pool, "score"):  # attention over frequency: a 1x1 conv
        work["freq_pool"] = channels * channels * bins * steps
    rnn = getattr(model, "rnn", None)
    if isinstance(rnn, nn.RNNBase):
        gates = {"GRU": 3, "LSTM": 4}.get(rnn.mode, 1)
        directions = 2 if rnn.bidirectional else 1
        hidden = rnn.hidden_size
        inputs = [rnn.input_size] + [hidden * directions] * (rnn.num_layers - 1)
        work["rnn"] = steps * sum(directions * gates * (i * hidden + hidden * hidden) for i in inputs)
        outputs["freq_pool"] = (steps, rnn.input_size)
        outputs["rnn"] = (steps, hidden * directions)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            calls = steps if name == "attention" else 1  # temporal attention scores every step
            work[name] = calls * module.in_features * module.out_features
    largest = max(outputs, key=lambda n: math.prod(outputs[n]))
    return sum(work.values()), math.prod(outputs[largest]), max(work, key=work.get), largest, outputs[largest]


# -- 4. the stored tensors --------------------------------------------------------------------------

@dataclass
class Stored:
    """A model file's entries as its zip directory declares them (nothing inflated)."""
    is_zip: bool
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (declared, in the file)

    @property
    def tensor_bytes(self) -> int:
        """Declared bytes of the tensor data entries (`<archive>/data/<key>`)."""
        return sum(size for name, (size, _) in self.entries.items() if "/data/" in f"/{name}")

    def largest(self) -> str:
        """The largest tensor entry, for a message: 'data/23: 1.0 GiB declared, 4.6 MiB in the file'."""
        tensors = {n: s for n, s in self.entries.items() if "/data/" in f"/{n}"} or self.entries
        if not tensors:
            return "no entries"
        name = max(tensors, key=lambda n: tensors[n][0])
        declared, packed = tensors[name]
        return f"{name}: {human(declared)} declared, {human(packed)} in the file"


def stored_tensors(path: Path) -> tuple[str | None, Stored]:
    """(problem, entries) of the model file at `path`, from its zip directory (or its size, for a file
    that is no zip archive: torch's legacy format keeps tensors inline)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        size = Path(path).stat().st_size
        stored = Stored(False, {"": (size, size)})
        if size > MAX_FILE_BYTES:
            return f"{human(size)}; a model file holds at most {human(MAX_FILE_BYTES)}", stored
        return None, stored
    stored = Stored(True, {info.filename: (info.file_size, info.compress_size) for info in infos})
    for info in infos:
        if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            return (f"{info.filename}: a pickle of {human(info.file_size)} ({human(info.compress_size)} in the file); "
                    f"at most {human(MAX_PICKLE_BYTES)}"), stored
        if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            return (f"{info.filename}: inflates {info.file_size / max(info.compress_size, 1):,.0f} times "
                    f"({human(info.compress_size)} in the file, {human(info.file_size)} declared); torch.save "
                    f"stores tensors uncompressed: not a model file audiocnn wrote"), stored
    total = sum(declared for declared, _ in stored.entries.values())
    if total > MAX_FILE_BYTES:
        return (f"its entries declare {human(total)} ({stored.largest()}); a model file holds at most "
                f"{human(MAX_FILE_BYTES)}"), stored
    return None, stored
