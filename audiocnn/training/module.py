"""`Classifier`: the LightningModule around any `nn.Module` that maps windows to logits."""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from audiocnn.training.transfer import frozen_modules, parameter_groups


class Classifier(L.LightningModule):
    """Cross-entropy training of `model`: `(batch, 1, n_bins, frames)` -> `(batch, n_classes)`.

    `frontend` turns a batch into the model's input: `nn.Identity()` for windows from the
    feature store; `CQTFrontend` (waveforms `(batch, samples)` -> CQT) on the fly. Logs train/val loss and accuracy once per epoch; the optimizer comes from the
    `optimizer` config (`_target_`, default AdamW).
    """

    def __init__(self, model: nn.Module, optimizer_cfg: DictConfig, n_classes: int,
                 frontend: nn.Module | None = None):
        super().__init__()
        self.frontend = frontend if frontend is not None else nn.Identity()
        self.model = model
        self.optimizer_cfg = OmegaConf.to_container(optimizer_cfg, resolve=True)
        self.loss = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.frontend(x))

    def _step(self, batch, stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        x, y = batch
        features = self.frontend(x)
        logits = self.model(features)
        loss = self.loss(logits, y)
        accuracy(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val", self.val_acc)

    def on_train_epoch_start(self) -> None:
        # Lightning puts every module in train mode each epoch; frozen parts stay in eval
        # mode so that their batch norm statistics do not drift either.
        for module in frozen_modules(self.model):
            module.eval()

    def configure_optimizers(self):
        """The `optimizer` config over head and backbone parameter groups (see `transfer`)."""
        kwargs = {k: v for k, v in self.optimizer_cfg.items() if k not in ("name", "backbone_lr_scale")}
        groups = parameter_groups(self.model, kwargs["lr"], self.optimizer_cfg.get("backbone_lr_scale", 1.0))
        trainable_frontend = [p for p in self.frontend.parameters() if p.requires_grad]  # features.trainable
        if trainable_frontend:
            groups.append({"params": trainable_frontend})
        return instantiate(kwargs, _partial_=True)(groups)  # partial: Hydra would wrap the tensors


@torch.inference_mode()
def predict_probabilities(model: nn.Module, loader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Class probabilities per clip from a sliding-window loader: `(clips, n_classes)`, labels `(clips,)`.

    Each clip's window logits are softmaxed and averaged (long clips vote over windows).
    """
    model.eval().to(device)
    probabilities, labels = [], []
    for windows, y, counts in loader:
        window_probs = model(windows.to(device)).softmax(dim=1).cpu()
        for clip_probs in window_probs.split(counts.tolist()):
            probabilities.append(clip_probs.mean(dim=0))
        labels.append(y)
    return torch.stack(probabilities), torch.cat(labels)
