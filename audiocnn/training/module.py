"""`Classifier`: the LightningModule around any `nn.Module` that maps windows to logits."""

from __future__ import annotations


import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from audiocnn.errors import NonFiniteError
from audiocnn.models.head import frames_to_logits
from audiocnn.training.augment import SpectrogramAugment, WaveformAugment
from audiocnn.training.optim import OptimizerSettings, SchedulerSettings, build_optimizer, build_scheduler
from audiocnn.training.transfer import frozen_modules


class Classifier(L.LightningModule):
    """Cross-entropy training of `model` (a `models.head.CQTClassifier`): windows -> `(batch, n_classes)`.

    `multilabel=True` (multi-label data: targets `(batch, n_classes)` of 0/1): binary cross-entropy
    on each class's logit (`BCEWithLogitsLoss`, `class_weights` as its `pos_weight`; label smoothing
    moves each target towards 1/2), and the epoch's macro average precision (`{stage}_map`) is
    logged instead of accuracy (`{stage}_acc`).

    The model's own `frontend` turns a batch into log-CQT windows: `nn.Identity()` for windows
    from the feature store; `CQTFrontend` (waveforms `(batch, samples)` -> CQT) on the fly; its
    trainable kernels (`features.trainable`) train with the backbone's parameters. Logs train/val loss and accuracy once per epoch. The optimizer and learning-rate schedule
    come from the `optimizer` and `scheduler` configs (see `optim`). In training only,
    `waveform_augment` runs before the front-end and `augment` after it (see `augment`);
    with mixup the loss takes the mixed targets, accuracy the true labels. A non-finite loss
    stops training with `NonFiniteError` (the data sets stop it first, naming the clip, when
    an input window is not finite; so a non-finite loss here means the run diverged or the
    front-end / augmentation made the non-finite values). It costs one scalar sync per step.
    Loss and accuracy are torchmetrics states, so under DDP the epoch's figures are those of
    every process's clips together (exact, also when the processes hold unequal shares),
    the same on every process: early stopping and the best checkpoint decide alike.
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerSettings, n_classes: int,
                 scheduler: SchedulerSettings | None = None, augment: SpectrogramAugment | None = None,
                 waveform_augment: WaveformAugment | None = None, label_smoothing: float = 0.0,
                 class_weights: Tensor | None = None, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.optimizer_settings, self.scheduler_settings = optimizer, scheduler or SchedulerSettings()
        self.augment = augment or SpectrogramAugment({}, n_classes, floor=0.0, bins_per_octave=12)
        self.waveform_augment = waveform_augment or WaveformAugment({})
        self.multilabel, self.label_smoothing = multilabel, float(label_smoothing)
        if multilabel:
            self.loss = nn.BCEWithLogitsLoss(pos_weight=class_weights)
            self.metric_name = "map"
            self.train_metric, self.val_metric = (MultilabelAveragePrecision(num_labels=n_classes, average="macro")
                                                  for _ in range(2))
        else:
            self.loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
            self.metric_name = "acc"
            self.train_metric, self.val_metric = (MulticlassAccuracy(num_classes=n_classes, average="micro")
                                                  for _ in range(2))
        self.train_loss_mean, self.val_loss_mean = MeanMetric(), MeanMetric()  # weighted by batch size

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def frames(self, x: Tensor) -> Tensor:
        """A batch as the loader gives it -> `(batch, 1, n_bins, frames)` log-CQT windows (the model's
        front-end; a plain module without one takes the batch as it is)."""
        return getattr(self.model, "frontend", nn.Identity())(x)

    def _step(self, batch, stage: str, metric: Metric) -> Tensor:
        x, y = batch
        targets = y
        if stage == "train":
            x = self.waveform_augment(x)  # identity unless on-the-fly features with augment.waveform
        features = self.frames(x)
        if stage == "train":
            features, targets = self.augment(features, y)  # targets: (batch,) or (batch, n_classes)
        logits = frames_to_logits(self.model)(features)
        if self.multilabel and self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        loss = self.loss(logits, targets)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteError(self._why_non_finite(stage, loss, x, features))
        metric(logits, y.int() if self.multilabel else y)
        mean = self.train_loss_mean if stage == "train" else self.val_loss_mean
        mean.update(loss.detach(), weight=len(y))
        self.log(f"{stage}_loss", mean, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_{self.metric_name}", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def _why_non_finite(self, stage: str, loss: Tensor, x: Tensor, features: Tensor) -> str:
        where = f"{stage}_loss={float(loss)} at epoch {self.current_epoch}, step {self.global_step}"
        if not bool(torch.isfinite(x).all()):
            return f"{where}: the input batch is not finite (its loader did not check it)"
        if not bool(torch.isfinite(features).all()):
            return (f"{where}: the inputs are finite but the front-end or augmentation made non-finite values; "
                    "check features.* and augment.*")
        return (f"{where} with finite inputs: training diverged; lower optimizer.lr or set "
                "trainer.gradient_clip_val")

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_metric)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val", self.val_metric)

    def on_train_start(self) -> None:
        # Under DDP every process starts from the same seed; give each its own augmentation draws.
        if self.trainer.world_size > 1:
            torch.manual_seed((torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63)

    def on_train_epoch_start(self) -> None:
        # Lightning puts every module in train mode each epoch; frozen parts stay in eval
        # mode so that their batch norm statistics do not drift either.
        for module in frozen_modules(self.model):
            module.eval()

    def configure_optimizers(self):
        """The `optimizer` over head and backbone parameter groups, with the `scheduler` config's schedule."""
        optimizer = build_optimizer(self.model, self.optimizer_settings)  # the front-end's trainable kernels too
        if self.scheduler_settings.target is None:  # scheduler=none: a constant learning rate
            return optimizer
        # the schedule's length: onecycle counts optimizer steps, cosine counts epochs
        schedule = build_scheduler(optimizer, self.scheduler_settings, self.trainer.max_epochs,
                                   self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": schedule}
