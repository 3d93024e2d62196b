"""Check a conv stack against the input size before anything is built or trained."""

from __future__ import annotations

from audiocnn.errors import ShapeError
from audiocnn.models.blocks import BlockSpec, Pair

AXES = ("frequency", "time")
# A time length no block can shrink to zero: traces the frequency axis of a stack alone.
UNBOUNDED_TIME = 1 << 20


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
