"""A layer-by-layer model summary from one forward pass on a `(1, 1, n_bins, frames)` input.

One row per call of a leaf module (a module with no children), in execution order: its
dotted name, type, output shape without the batch axis (`C x F x T` for feature maps,
`T x H` for RNN sequences, `N` for vectors), parameters, receptive field in CQT bins x
frames and multiply-adds. A module called twice (a shared ReLU) gets a second row with
0 params, so the params column still sums to the model's total.

Receptive field, per axis, along the main chain (Araujo et al. 2019, "Computing
receptive fields of convolutional neural networks"):
    k_eff = dilation * (k - 1) + 1,   rf_out = rf_in + (k_eff - 1) * jump_in,   jump_out = jump_in * stride
Padding moves where the field sits, not its size. Modules whose dotted name contains
`shortcut` or `downsample` are the parallel branch of a residual block: they are traced
from the block's input and never advance the main chain (the sum after the block has the
main path's larger field).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from audiocnn.models.head import frames_to_logits

BRANCH_WORDS = ("shortcut", "downsample")
RNN_GATES = {nn.GRU: 3, nn.LSTM: 4, nn.RNN: 1}
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # empty ones are no-ops, not layers
Field = tuple[tuple[int, int], tuple[int, int]]  # ((rf_bins, rf_frames), (jump_bins, jump_frames))


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # without the batch axis
    params: int
    rf_bins: int | None  # None where the output is not a (batch, C, F, T) feature map
    rf_frames: int | None
    macs: int


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    input_shape: tuple[int, int, int]  # (1, n_bins, frames)
    total_params: int
    trainable_params: int
    total_macs: int
    name: str = ""

    def table(self) -> str:
        """The summary as fixed-width text, one line per row, totals at the bottom."""
        header = ("Layer", "Type", "Output shape", "Params", "RF bins x frames", "MACs")
        lines = [
            (r.name, r.kind, " x ".join(map(str, r.output_shape)), f"{r.params:,}",
             "" if r.rf_bins is None else f"{r.rf_bins} x {r.rf_frames}", human(r.macs))
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
        right = (False, False, False, True, True, True)

        def fmt(cells):
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

        rule = "-" * len(fmt(header))
        channels, bins, frames = self.input_shape
        return "\n".join([
            f"Model: {self.name}",
            f"Input: {channels} x {bins} x {frames} (channels x CQT bins x frames)",
            rule, fmt(header), rule, *map(fmt, lines), rule,
            f"Total params: {self.total_params:,} ({human(self.total_params)})",
            f"Trainable params: {self.trainable_params:,} ({human(self.trainable_params)})",
            f"Total multiply-adds: {human(self.total_macs)}",
        ])


def human(n: int) -> str:
    """12345678 -> '12.3 M'; below a thousand the number itself."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _window(module: nn.Module, size: tuple[int, int]):
    """(kernel, stride, dilation) pairs of a windowed layer; None for layers without a window."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        dilation = _pair(getattr(module, "dilation", 1))  # AvgPool2d has no dilation
        return _pair(module.kernel_size), _pair(module.stride or module.kernel_size), dilation
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        # Window i spans [floor(i*W/n), ceil((i+1)*W/n)): take the widest one, and the
        # mean step rounded down (exact when n divides W).
        out = [size[a] if o is None else o for a, o in enumerate(_pair(module.output_size))]
        kernel = tuple(max(-(-(i + 1) * w // n) - i * w // n for i in range(n)) for w, n in zip(size, out))
        return kernel, tuple(max(1, w // n) for w, n in zip(size, out)), (1, 1)
    return None


def _advance(field: Field, module: nn.Module, size: tuple[int, int]) -> Field:
    """The field after `module` on an input of `size` (F, T); BN, ReLU, dropout keep it."""
    window = _window(module, size)
    if window is None:
        return field
    (kernel, stride, dilation), (rf, jump) = window, field
    rf = tuple(rf[a] + dilation[a] * (kernel[a] - 1) * jump[a] for a in (0, 1))
    jump = tuple(jump[a] * stride[a] for a in (0, 1))
    return rf, jump  # type: ignore[return-value]


def _branch_root(name: str) -> str | None:
    """'layer1.0.downsample.0' -> 'layer1.0.downsample'; None on the main chain."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if any(word in part for word in BRANCH_WORDS):
            return ".".join(parts[: i + 1])
    return None


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-adds of one call, batch 1. Biases, norms, pools and activations count 0."""
    if isinstance(module, nn.Conv2d):
        kh, kw = _pair(module.kernel_size)
        return out.numel() * module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() // module.out_features * module.in_features * module.out_features
    if isinstance(module, nn.RNNBase) and type(module) in RNN_GATES:
        steps = out.shape[1 if module.batch_first else 0] if out.dim() == 3 else out.shape[0]
        gates, hidden = RNN_GATES[type(module)], module.hidden_size
        state = module.proj_size or hidden  # LSTM with projections feeds back proj_size values
        directions = 2 if module.bidirectional else 1
        projection = hidden * state if module.proj_size else 0
        per_step = sum(  # layers after the first read both directions' outputs
            directions * (gates * (inputs * hidden + state * hidden) + projection)
            for inputs in [module.input_size] + [state * directions] * (module.num_layers - 1)
        )
        return steps * per_step
    return 0


def _shape(module: nn.Module, out: torch.Tensor) -> tuple[int, ...]:
    """Output shape without the batch axis (an RNN without batch_first has it second)."""
    shape = tuple(out.shape)
    if isinstance(module, nn.RNNBase) and not module.batch_first and out.dim() == 3:
        return shape[:1] + shape[2:]
    return shape[1:]


def summarize(model: nn.Module, n_bins: int, frames: int, name: str | None = None) -> ModelSummary:
    """Run `model` once on zeros `(1, 1, n_bins, frames)` and describe every leaf call. A model whose
    front-end is not the identity (the CQT of a model trained on the fly: it takes waveforms) runs
    from its front-end's output (`classify`); the front-end's trainable kernels, if any, are in the totals.

    The model runs in eval mode without gradients (batch norm statistics stay untouched)
    and is put back in the mode it was in.
    """
    rows: list[LayerRow] = []
    counted: set[int] = set()  # parameter ids already in a row: shared weights count once
    main: Field = ((1, 1), (1, 1))
    entry: dict[str, Field] = {}  # main-chain field when each module was entered
    branches: dict[str, Field] = {}  # field inside each residual branch, from its block's input
    names = {module: key for key, module in model.named_modules()}

    def pre_hook(module, _inputs):
        key = names[module]
        entry[key] = main
        if key and _branch_root(key) == key:  # a branch starts from the block that holds it
            branches[key] = entry.get(key.rpartition(".")[0], main)

    def hook(module, inputs, output):
        nonlocal main
        out = output[0] if isinstance(output, (tuple, list)) else output
        key = names[module]
        new = [p for p in module.parameters() if id(p) not in counted]
        counted.update(id(p) for p in new)
        rf = None
        if out.dim() == 4:
            root, size = _branch_root(key), tuple(inputs[0].shape[-2:]) if inputs else (1, 1)
            if root is None:
                main = rf = _advance(main, module, size)
            else:
                branches[root] = rf = _advance(branches.get(root, main), module, size)
        rows.append(LayerRow(
            key, type(module).__name__, _shape(module, out), sum(p.numel() for p in new),
            rf[0][0] if rf else None, rf[0][1] if rf else None, _macs(module, out),
        ))

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]
    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, CONTAINERS)]
    handles += [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    first = next(model.parameters(), None)
    x = torch.zeros(1, 1, n_bins, frames, device=first.device if first is not None else None)
    try:
        model.eval()
        with torch.no_grad():
            frames_to_logits(model)(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    # Parameters no leaf call touched (a bare nn.Parameter, an unused layer) get one row,
    # so the params column always sums to the total.
    params = {id(p): p for p in model.parameters()}
    rest = sum(p.numel() for i, p in params.items() if i not in counted)
    if rest:
        rows.append(LayerRow("(not in a leaf call)", "-", (), rest, None, None, 0))
    return ModelSummary(
        rows=rows,
        input_shape=(1, n_bins, frames),
        total_params=sum(p.numel() for p in params.values()),
        trainable_params=sum(p.numel() for p in params.values() if p.requires_grad),
        total_macs=sum(r.macs for r in rows),
        name=name or type(model).__name__,
    )
