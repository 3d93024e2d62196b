"""`CNN`: a plain 2D CNN over the log-CQT that pools time and frequency away.

(batch, 1, n_bins, frames) -> ConvStack -> (batch, C, F', T') -> global pooling over
(F', T') -> (batch, C or 2C) -> dropout -> linear -> (batch, n_classes) logits.
Global pooling makes it invariant to where an event happens, and so blind to the
order of events beyond one receptive field: compare it with `CRNN`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from audiocnn.models.blocks import BlockSpec, ConvStack
from audiocnn.models.shapes import UNBOUNDED_TIME, trace_shapes

GLOBAL_POOLS = ("avg", "max", "avgmax")


class CNN(nn.Module):
    def __init__(
        self,
        n_classes: int,
        n_bins: int,
        blocks: Sequence[Mapping[str, Any]],
        global_pool: str = "avgmax",
        dropout: float = 0.3,
    ):
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"model.global_pool={global_pool!r}; allowed: {', '.join(GLOBAL_POOLS)}")
        self.specs = [BlockSpec.from_config(b) for b in blocks]
        trace_shapes(self.specs, (n_bins, UNBOUNDED_TIME))  # fail now if the stack collapses frequency
        self.backbone = ConvStack(self.specs)
        self.global_pool = global_pool
        width = self.backbone.out_channels * (2 if global_pool == "avgmax" else 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, n_classes))

    def embed(self, x: Tensor) -> Tensor:
        """(batch, 1, n_bins, frames) -> (batch, width) pooled features."""
        features = self.backbone(x).flatten(2)  # (batch, C, F' * T')
        pooled = []
        if self.global_pool in ("avg", "avgmax"):
            pooled.append(features.mean(dim=2))
        if self.global_pool in ("max", "avgmax"):
            pooled.append(features.amax(dim=2))
        return torch.cat(pooled, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, 1, n_bins, frames) -> (batch, n_classes) logits."""
        return self.head(self.embed(x))
