"""Transfer learning and fine-tuning: load matching weights, freeze the backbone.

`model.init_from` names the weights to start from, read by `models.bundle.load_state`: a model
file from anywhere, so its zip directory and pickle are checked before any tensor is inflated (a
7 MB file can hold 6 GB of deflated zeros; `models.budget`), and only tensors are read.
Tensors are matched by name and shape, so a model pre-trained on other classes gives
its backbone and gets a new head. The head is the model's `head` (its `ClassifierHead`,
see `audiocnn.models.head`); every other parameter is the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from torch import Tensor, nn

FREEZE_OPTIONS = ("none", "backbone")


@dataclass
class TransferReport:
    """Which tensors of the model came from the source, which source tensors did not fit."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the source, absent or shaped differently here
    new: list[str] = field(default_factory=list)  # in the model, not (usable) in the source

    def describe(self) -> str:
        skipped = f" (skipped: {', '.join(self.skipped)})" if self.skipped else ""
        new = f" (new: {', '.join(self.new)})" if self.new else ""
        return f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}{skipped}, new {len(self.new)}{new}"


def load_matching(model: nn.Module, state: dict[str, Tensor]) -> TransferReport:
    """Copy every tensor of `state` whose name and shape match one of `model`'s."""
    own = model.state_dict()
    report = TransferReport()
    usable = {}
    for key, value in state.items():
        if key in own and own[key].shape == value.shape:
            usable[key] = value
            report.loaded.append(key)
        else:
            report.skipped.append(key)
    report.new = [key for key in own if key not in usable]
    model.load_state_dict(usable, strict=False)
    return report


def head_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters of `model.head` (the whole model counts as head if it has none)."""
    head = getattr(model, "head", model)
    return {id(p) for p in head.parameters()}


def freeze(model: nn.Module, what: str) -> None:
    """`backbone`: only the head trains (transfer learning); `none`: everything trains."""
    if what not in FREEZE_OPTIONS:
        raise ValueError(f"model.freeze={what!r}; allowed: {', '.join(FREEZE_OPTIONS)}")
    head = head_parameter_ids(model)
    for parameter in model.parameters():
        parameter.requires_grad_(what == "none" or id(parameter) in head)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Modules all of whose parameters are frozen: kept in eval mode so batch norm statistics stay too."""
    frozen = []
    for module in model.children():
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            frozen.append(module)
    return frozen


def parameter_groups(model: nn.Module, lr: float, backbone_lr_scale: float) -> list[dict]:
    """Trainable parameters in two groups: backbone at `lr * backbone_lr_scale`, head at `lr`."""
    in_head = head_parameter_ids(model)
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in in_head]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in in_head]
    groups = [{"params": head, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_scale})
    return groups
