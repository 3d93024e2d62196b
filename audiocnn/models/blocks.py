"""Convolutional building blocks and the output-size arithmetic they follow.

Every conv and pooling layer obeys, per axis, out = floor((W - F_eff + 2P) / S) + 1 with
F_eff = D * (F - 1) + 1 for dilation D. `BlockSpec.output_size` applies it so a stack
can be checked before any tensor is built: `trace_shapes` runs a stack's specs over an input size
and names the first layer that would make an axis smaller than 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from audiocnn.errors import ShapeError

Pair = tuple[int, int]  # (frequency, time)
AXES = ("frequency", "time")
# A time length no block can shrink to zero: traces the frequency axis of a stack alone.
UNBOUNDED_TIME = 1 << 20


def _pair(value: int | list[int] | tuple[int, int], name: str) -> Pair:
    if isinstance(value, int):
        return (value, value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a [frequency, time] pair, got {value!r}")
    return items  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """floor((W - F_eff + 2P) / S) + 1, the output length of a conv or pooling layer."""
    effective = dilation * (kernel - 1) + 1
    return (size - effective + 2 * padding) // stride + 1


@dataclass(frozen=True)
class BlockSpec:
    """One block of a conv stack, as written in `conf/model/*.yaml`.

    `type: conv` (default) is conv - batch norm - ReLU - pooling; `type: residual` is a
    ResNet basic block (two convs with the block's kernel, the first with its stride, plus
    an identity or 1x1-conv shortcut) followed by the same optional pooling.
    Sizes are ints or [frequency, time] pairs. `pool` is `max`, `avg` or `none`;
    `pool_stride` defaults to `pool_size`.
    """

    channels: int
    type: str = "conv"
    kernel: Pair = (3, 3)
    stride: Pair = (1, 1)
    padding: Pair = (1, 1)
    dilation: Pair = (1, 1)
    pool: str = "max"
    pool_size: Pair = (2, 2)
    pool_stride: Pair | None = None
    batch_norm: bool = True
    dropout: float = 0.0

    @classmethod
    def from_config(cls, spec: Mapping[str, Any]) -> "BlockSpec":
        spec = dict(spec)
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}")
        for key in ("kernel", "stride", "padding", "dilation", "pool_size", "pool_stride"):
            if spec.get(key) is not None:
                spec[key] = _pair(spec[key], key)
        if spec.get("pool", "max") not in ("max", "avg", "none"):
            raise ValueError(f"pool={spec['pool']!r}; allowed: max, avg, none")
        if spec.get("type", "conv") not in BLOCK_TYPES:
            raise ValueError(f"type={spec['type']!r}; allowed: {', '.join(BLOCK_TYPES)}")
        return cls(**spec)

    @property
    def effective_pool_stride(self) -> Pair:
        return self.pool_stride or self.pool_size

    def layer_sizes(self, size: Pair) -> list[tuple[str, Pair, Pair, Pair, Pair]]:
        """(layer, kernel, stride, padding, output size) for each conv and the pooling layer."""
        layers = []
        for stride in [self.stride] + ([(1, 1)] if self.type == "residual" else []):
            size = tuple(  # type: ignore[assignment]
                conv_output_size(size[a], self.kernel[a], stride[a], self.padding[a], self.dilation[a]) for a in (0, 1)
            )
            layers.append(("conv", self.kernel, stride, self.padding, size))
        freq, time = size
        if self.pool != "none":
            stride = self.effective_pool_stride
            pooled = tuple(conv_output_size((freq, time)[a], self.pool_size[a], stride[a], 0) for a in (0, 1))
            layers.append(("pool", self.pool_size, stride, (0, 0), pooled))  # type: ignore[arg-type]
        return layers


BLOCK_TYPES = ("conv", "residual")


def trace_shapes(specs: list[BlockSpec], input_size: Pair, *, key: str = "model.blocks") -> list[Pair]:
    """Output (frequency, time) after every block, for an input of `input_size`.

    Raises `ShapeError` naming the first layer that makes an axis smaller than 1, e.g.
    "model.blocks[3]: time 2 -> 0 with kernel 3, stride 2, padding 0".
    """
    sizes: list[Pair] = []
    size = input_size
    for index, spec in enumerate(specs):
        for layer, kernel, stride, padding, out in spec.layer_sizes(size):
            for axis, name in enumerate(AXES):
                if out[axis] < 1:
                    what = "pooling " if layer == "pool" else ""
                    raise ShapeError(
                        f"{key}[{index}]: {name} {size[axis]} -> {out[axis]} with {what}kernel {kernel[axis]}, "
                        f"stride {stride[axis]}, padding {padding[axis]}"
                    )
            size = out
        sizes.append(size)
    return sizes


def _pooling(spec: BlockSpec) -> list[nn.Module]:
    if spec.pool == "max":
        return [nn.MaxPool2d(spec.pool_size, spec.effective_pool_stride)]
    if spec.pool == "avg":
        return [nn.AvgPool2d(spec.pool_size, spec.effective_pool_stride)]
    return []


class ConvBlock(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU -> (Max|Avg)Pool2d -> Dropout.

    Input `(batch, in_channels, freq, time)`, output `(batch, spec.channels, freq', time')`
    with the sizes given by `BlockSpec.layer_sizes`.
    """

    def __init__(self, in_channels: int, spec: BlockSpec):
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                spec.channels,
                kernel_size=spec.kernel,
                stride=spec.stride,
                padding=spec.padding,
                dilation=spec.dilation,
                bias=not spec.batch_norm,
            )
        ]
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(spec.channels))
        layers.append(nn.ReLU(inplace=True))
        layers += _pooling(spec)
        if spec.dropout > 0:
            layers.append(nn.Dropout2d(spec.dropout))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """ResNet basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), then pooling.

    `(batch, in_channels, F, T)` -> `(batch, spec.channels, F', T')`. The shortcut is the
    identity when shapes match, else a strided 1x1 conv + batch norm (ResNet's option B).
    Padding should keep sizes ("same"), so that both branches agree.
    """

    def __init__(self, in_channels: int, spec: BlockSpec):
        super().__init__()
        conv = dict(kernel_size=spec.kernel, padding=spec.padding, dilation=spec.dilation, bias=False)
        self.conv1 = nn.Conv2d(in_channels, spec.channels, stride=spec.stride, **conv)
        self.bn1 = nn.BatchNorm2d(spec.channels)
        self.conv2 = nn.Conv2d(spec.channels, spec.channels, stride=1, **conv)
        self.bn2 = nn.BatchNorm2d(spec.channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != spec.channels or spec.stride != (1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, spec.channels, kernel_size=1, stride=spec.stride, bias=False),
                nn.BatchNorm2d(spec.channels),
            )
        tail = _pooling(spec) + ([nn.Dropout2d(spec.dropout)] if spec.dropout > 0 else [])
        self.tail = nn.Sequential(*tail)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))
        return self.tail(out)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """`model` (in eval mode) with each BatchNorm2d that follows a Conv2d (`ConvBlock`, `ResidualBlock`, a
    shortcut) folded into that conv: its weights and bias absorb the norm's affine map, as onnxruntime
    folds them when it loads an exported graph. The same outputs within float rounding, one operator
    less per block. In place; returns `model`."""
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
        elif isinstance(module, ResidualBlock):
            module.conv1, module.bn1 = fuse_conv_bn_eval(module.conv1, module.bn1), nn.Identity()
            module.conv2, module.bn2 = fuse_conv_bn_eval(module.conv2, module.bn2), nn.Identity()
    return model


class PeakNormalize(nn.Module):
    """Each example's log-magnitudes relative to its own peak, floored `top_db` dB below it.

    `(batch, 1, n_bins, frames)` natural-log magnitudes -> the same shape, values in
    [-top_db * ln(10) / 20, 0]: librosa's `amplitude_to_db(ref=np.max, top_db=...)`. A
    recording's level and its noise floor (microphone, room) stop telling speakers apart.
    """

    def __init__(self, top_db: float):
        super().__init__()
        self.top_db = float(top_db)
        self.floor = -self.top_db / 20 * math.log(10)

    def forward(self, x: Tensor) -> Tensor:
        return (x - x.amax(dim=(-2, -1), keepdim=True)).clamp_min(self.floor)

    def extra_repr(self) -> str:
        return f"top_db={self.top_db:g}"


def peak_normalize(top_db: float | None) -> nn.Module:
    """`PeakNormalize(top_db)`, or the identity for `top_db=None` (`features.top_db`)."""
    return nn.Identity() if top_db is None else PeakNormalize(top_db)


class ConvStack(nn.Sequential):
    """Input batch norm over the log-CQT, then one `ConvBlock` or `ResidualBlock` per spec.

    `(batch, 1, n_bins, frames)` -> `(batch, specs[-1].channels, freq', time')`.
    The input norm learns the scale of the log-amplitudes, so the store keeps raw values.
    """

    def __init__(self, specs: list[BlockSpec]):
        layers: list[nn.Module] = [nn.BatchNorm2d(1)]
        channels = 1
        for spec in specs:
            layers.append((ResidualBlock if spec.type == "residual" else ConvBlock)(channels, spec))
            channels = spec.channels
        super().__init__(*layers)
        self.out_channels = channels
