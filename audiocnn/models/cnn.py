"""`CNN`: a 2D CNN over the log-CQT that pools time and frequency away.

x -> frontend (`models.head`: identity, or the CQT on the fly) -> (batch, 1, n_bins, frames)
-> ConvStack -> (batch, C, F', T')                                 forward_features
-> pooling -> (batch, width) -> ClassifierHead -> (batch, n_classes)   forward_head

`global_pool`: `avg`, `max` or `catavgmax` (both, concatenated, as timm names it) pool
over (F', T') (width C or 2C); `grid`
average-pools to a fixed `grid_size` and flattens (width C * gh * gw), as AlexNet and
LeNet feed their fully connected layers. Global pooling makes the model invariant to
where an event happens, and so blind to the order of events beyond one receptive field:
compare it with `CRNN`. The same class builds LeNet, AlexNet, VGG and ResNet shapes from
their block lists (conf/model/).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from audiocnn.models.blocks import UNBOUNDED_TIME, BlockSpec, ConvStack, peak_normalize, trace_shapes
from audiocnn.models.head import ClassifierHead, CQTClassifier
from audiocnn.models.norm import input_norm

GLOBAL_POOLS = ("avg", "max", "catavgmax", "grid")


def cell_weights(length: int, cells: int, like: Tensor) -> Tensor:
    """(cells, length): row i averages positions [floor(i L / n), ceil((i + 1) L / n)), the cells of
    `nn.AdaptiveAvgPool2d`. Built from `length` with tensor operations (the traced graph takes any
    length) and only operators the exported-file check allows (`inference.onnx_check`)."""
    cell, position = torch.arange(cells, device=like.device), torch.arange(length, device=like.device)
    start, end = cell * length // cells, ((cell + 1) * length + cells - 1) // cells
    inside = ((position[None] >= start[:, None]).to(like.dtype)
              - (position[None] >= end[:, None]).to(like.dtype))  # 1 on [start, end), end > start
    return inside / (end - start)[:, None].to(like.dtype)


class GridPool(nn.AdaptiveAvgPool2d):
    """`nn.AdaptiveAvgPool2d` to `output_size` (gh, gw), (batch, C, F, T) -> (batch, C, gh, gw), as two
    matrix products with `cell_weights`: the same averages (up to float rounding), and an ONNX export
    with the feature map's size unknown until run time (torch's exporter refuses adaptive pooling
    then, and every audiocnn graph takes any chunk length)."""

    def forward(self, x: Tensor) -> Tensor:
        rows, columns = self.output_size
        return cell_weights(x.shape[-2], rows, x) @ x @ cell_weights(x.shape[-1], columns, x).transpose(0, 1)


class CNN(CQTClassifier):
    def __init__(
        self,
        n_classes: int,
        n_bins: int,
        blocks: Sequence[Mapping[str, Any]],
        global_pool: str = "catavgmax",
        grid_size: Sequence[int] = (4, 4),
        head_hidden: Sequence[int] = (),
        dropout: float = 0.3,
        top_db: float | None = None,
        norm: Mapping[str, Any] | None = None,
        frontend: nn.Module | None = None,
    ):
        super().__init__(frontend)
        self.specs = [BlockSpec.from_config(b) for b in blocks]
        trace_shapes(self.specs, (n_bins, UNBOUNDED_TIME))  # fail now if the stack collapses frequency
        self.backbone = ConvStack(self.specs)
        self.input_norm = input_norm(norm, n_bins)  # model.norm: PCEN / per-bin (models.norm), first
        self.normalize = peak_normalize(top_db)  # (batch, 1, n_bins, frames), before the backbone
        self.global_pool = global_pool
        self.grid = GridPool(tuple(grid_size)) if global_pool == "grid" else None
        width = self.backbone.out_channels * {"catavgmax": 2, "grid": grid_size[0] * grid_size[1]}.get(global_pool, 1)
        self.head = ClassifierHead(width, n_classes, head_hidden, dropout)

    def forward_features(self, x: Tensor) -> Tensor:
        """(batch, 1, n_bins, frames) -> (batch, C, F', T') conv feature map."""
        return self.backbone(self.normalize(self.input_norm(x)))

    def pool(self, features: Tensor) -> Tensor:
        """(batch, C, F', T') -> (batch, width) by `global_pool`."""
        if self.grid is not None:
            pooled = self.grid(features)  # (batch, C, gh, gw)
            return pooled.reshape(pooled.shape[0], -1)  # (batch, C * gh * gw); an ONNX Reshape, as the others
        features = features.flatten(2)  # (batch, C, F' * T')
        pooled = []
        if self.global_pool in ("avg", "catavgmax"):
            pooled.append(features.mean(dim=2))
        if self.global_pool in ("max", "catavgmax"):
            pooled.append(features.amax(dim=2))
        return torch.cat(pooled, dim=1)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(batch, C, F', T') -> (batch, n_classes) logits (or, `pre_logits`, the head's input to `fc`)."""
        return self.head(self.pool(features), pre_logits=pre_logits)
