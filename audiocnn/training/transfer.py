"""Transfer learning and fine-tuning: load matching weights, freeze the backbone.

`model.init_from` names the weights to start from: a `model.pt` written by the train
stage (or its folder), a Lightning `.ckpt`, `runs:/<run id>/model` or
`models:/<name>/<version>` from MLflow. Tensors are matched by name and shape, so a
model pre-trained on other classes gives its backbone and gets a new head.
Everything whose name does not start with `head.` is the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
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


def weights_file(source: str) -> Path:
    """Local path of the weights named by `source` (downloads MLflow URIs)."""
    if source.startswith(("runs:/", "models:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        found = [local] if local.is_file() else sorted(local.rglob("model.pt"))
        if not found:
            raise FileNotFoundError(f"model.init_from={source}: no model.pt in the MLflow model "
                                    "(was it logged with tracking.log_model=true?)")
        return found[0]
    path = Path(source)
    path = path / "model.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"model.init_from={source}: {path} does not exist")
    return path


def load_state(source: str) -> dict[str, Tensor]:
    """The state dict in `source`; never unpickles code (`weights_only=True`)."""
    loaded = torch.load(weights_file(source), map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded)
    if any(key.startswith("model.") for key in state):  # a Lightning checkpoint of `Classifier`
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return state


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


def is_head(name: str) -> bool:
    return name.startswith("head.")


def freeze(model: nn.Module, what: str) -> None:
    """`backbone`: only the head trains (transfer learning); `none`: everything trains."""
    if what not in FREEZE_OPTIONS:
        raise ValueError(f"model.freeze={what!r}; allowed: {', '.join(FREEZE_OPTIONS)}")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(what == "none" or is_head(name))


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Modules all of whose parameters are frozen: kept in eval mode so batch norm statistics stay too."""
    return [m for name, m in model.named_children()
            if not is_head(f"{name}.") and any(True for _ in m.parameters())
            and not any(p.requires_grad for p in m.parameters())]


def parameter_groups(model: nn.Module, lr: float, backbone_lr_scale: float) -> list[dict]:
    """Trainable parameters in two groups: backbone at `lr * backbone_lr_scale`, head at `lr`."""
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and not is_head(n)]
    head = [p for n, p in model.named_parameters() if p.requires_grad and is_head(n)]
    groups = [{"params": head, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_scale})
    return groups
