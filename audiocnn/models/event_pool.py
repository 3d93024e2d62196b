"""Event pooling: a CRNN's frame probabilities to clip probabilities, for sound event detection.

A model that answers per frame (`CRNN.frame_logits`: the head on every step of the recurrent
layer's output) is trained on clips whose labels are only clip-level ("weak") through a pooling
of its frame probabilities p_t (each class on its own, t over the T' output frames):

* `linear_softmax` (Wang et al. 2019, "A comparison of five multiple instance learning pooling
  functions for sound event detection with weak labeling"): sum_t p_t^2 / sum_t p_t. Frames that
  are confident count more; no parameters. A clip of one loud frame scores that frame's p.
* `attention` (the DCASE task 4 baseline's): sum_t p_t w_t with w = softmax over t of a linear
  map of the recurrent outputs, one weight sequence per class: the model learns which frames
  speak for each class.

`time_stride` gives the CQT frames per output frame; `data.events.output_frame_seconds(hop_length, sr,
time_stride(specs))` the output frames' duration, and `data.events.frame_targets` the targets at it.
`capped_time_stride` gives the blocks an events model is built with: a CRNN config's
`event_time_stride` (default 2: 64-ms frames at the demo's 32-ms hop, the DCASE baseline's frame
rate) caps the conv stack's time stride, because onsets and offsets come out in whole output frames
while a clip classifier may pool time further (docs/events.md, "Frame rate").
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from audiocnn.models.blocks import BlockSpec

EVENT_POOLS = ("linear_softmax", "attention")
EPS = 1e-7


class EventPool(nn.Module):
    """`(batch, T', n_classes)` frame probabilities (and, for `attention`, the `(batch, T', width)` recurrent
    outputs they came from) -> `(batch, n_classes)` clip probabilities in [0, 1]."""

    def __init__(self, kind: str, width: int, n_classes: int):
        super().__init__()
        self.kind = kind
        self.attention = nn.Linear(width, n_classes) if kind == "attention" else None

    def forward(self, frame_probabilities: Tensor, outputs: Tensor) -> Tensor:
        if self.attention is None:
            return (frame_probabilities ** 2).sum(dim=1) / frame_probabilities.sum(dim=1).clamp_min(EPS)
        weights = self.attention(outputs).softmax(dim=1)  # (batch, T', n_classes), summing to 1 over T'
        return (frame_probabilities * weights).sum(dim=1)


def time_stride(specs: Sequence[BlockSpec]) -> int:
    """Input frames per output frame of a conv stack: the product of its convs' and poolings' time strides."""
    return math.prod(s.stride[1] * (s.effective_pool_stride[1] if s.pool != "none" else 1) for s in specs)


def capped_time_stride(blocks: Sequence[Mapping[str, Any]], cap: int | None) -> list[dict]:
    """The `blocks` (a model config's, as written) with each pooling's time size and stride set to 1
    where it would take the stack's time stride past `cap` (None: unchanged). `ValueError` when the
    convs' own time strides pass it."""
    blocks = [dict(block) for block in blocks]
    if cap is None:
        return blocks
    stride = 1
    for block in blocks:
        spec = BlockSpec.from_config(block)
        stride *= spec.stride[1]
        if stride > cap:
            raise ValueError(f"model.event_time_stride={cap}: the blocks' conv strides alone reach {stride}")
        if spec.pool == "none":
            continue
        if stride * spec.effective_pool_stride[1] > cap:
            block["pool_size"] = [spec.pool_size[0], 1]
            if block.get("pool_stride") is not None:
                block["pool_stride"] = [spec.pool_stride[0], 1]
        else:
            stride *= spec.effective_pool_stride[1]
    return blocks
