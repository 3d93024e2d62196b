"""Training the `events` task (sound event detection, docs/events.md): a CRNN's frame outputs on frame
targets where strong labels exist, its frames pooled to the clip on the clip's (weak) labels everywhere.

    x (batch, 1, n_bins, window)  -> augment (no time shift; mixup mixes the frame targets too)
      -> model.event_probabilities -> frames p (batch, T', n_classes), clip q (batch, n_classes)
    loss = BCE(q, weak labels) over every clip
           + trainer.frame_loss_weight * BCE(p, frame targets) over the frames of the strong clips

Both terms are binary cross-entropies on probabilities (the event pooling gives probabilities, not
logits), clamped to [EPS, 1 - EPS] so that a saturated sigmoid never gives an infinite loss; each is the
mean over its (clip or frame, class) pairs, and a batch without a strong clip has no frame term.
`trainer.label_smoothing` moves both kinds of target towards 1/2. `trainer.class_weights=balanced` weighs
each class's positive term by its negatives / positives: over the train clips' labels in the clip term,
over the strong train clips' output frames in the frame term (`class_pos_weights`). The windows' frame targets come
from `training.windows.EventWindowDataset`.

Augmentations: those that do not move time (masks, EQ, tilt, reverb, frequency warp, gain, noise,
pitch shift) are applied as for any task and leave the targets as they are (a time mask may hide part
of an event, as SpecAugment does in the DCASE baselines). `time_shift` is turned off for this task,
saying so once: a shift by a number of CQT frames that is not a multiple of the time stride has no
place on the output frames' grid, and the random crop of each training window moves the events
already. mixup mixes the frame targets with the same weights and partners as the windows and the
clip labels; a mixed window keeps a frame term only when both windows it mixes are strong.

Logged per epoch (`{stage}` train / val): `{stage}_loss` (the total: the best checkpoint and early
stopping watch `val_loss`), `{stage}_frame_loss`, `{stage}_clip_loss`, `{stage}_map` (clip mAP of the
pooled probabilities against the weak labels) and `val_frame_f1` (macro F1 at 0.5 over the strong val
clips' frames, 0 when the val split has none): what a sweep ranks an events run by (`best_val_frame_f1`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MultilabelF1Score

from audiocnn.data.events import frame_targets as event_frame_targets
from audiocnn.errors import ConfigError, NonFiniteError
from audiocnn.training.module import Classifier
from audiocnn.training.optim import class_weights

EPS = 1e-7
OFF_FOR_EVENTS = ("time_shift",)  # augment.transforms that move time: off for the events task
SCORE = "val_frame_f1"            # what an events run is ranked by (run.json's best_val_frame_f1)


def check_event_model(model: nn.Module, name: str) -> None:
    """`ConfigError` in one line unless `model` answers per frame (`frame_logits`, `event_probabilities`)."""
    if not (hasattr(model, "frame_logits") and hasattr(model, "event_probabilities")):
        raise ConfigError(f"model={name}: the events task needs a CRNN (model=crnn_gru or model=crnn_lstm), a model "
                          "with frame outputs; this one answers per clip only")


def binary_cross_entropy(probabilities: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Element-wise BCE of probabilities (clamped to [EPS, 1 - EPS]) against targets in [0, 1]; `pos_weight`
    `(n_classes,)` weighs each class's positive term, as `BCEWithLogitsLoss`'s: -(w y log p + (1 - y) log(1 - p))."""
    p = probabilities.clamp(EPS, 1 - EPS)
    positive = targets * torch.log(p)
    return -((positive if pos_weight is None else pos_weight * positive) + (1 - targets) * torch.log1p(-p))


def event_loss(frame_probabilities: Tensor, clip_probabilities: Tensor, frame_targets: Tensor,
               clip_targets: Tensor, strong: Tensor, frame_weight: float = 1.0, clip_pos_weight: Tensor | None = None,
               frame_pos_weight: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(total, frame term, clip term). `frame_probabilities`, `frame_targets`: `(batch, T', n_classes)`;
    `clip_probabilities`, `clip_targets`: `(batch, n_classes)`; `strong` `(batch,)` bool. The clip term is
    the mean BCE over every clip and class; the frame term the mean BCE over the strong clips' frames and
    classes (0 when none is strong); total = clip + frame_weight * frame. `clip_pos_weight`,
    `frame_pos_weight` `(n_classes,)`: `trainer.class_weights=balanced` (`class_pos_weights`)."""
    if frame_probabilities.shape != frame_targets.shape:
        raise ValueError(f"frame outputs {list(frame_probabilities.shape)} and frame targets "
                         f"{list(frame_targets.shape)} differ: the windows' output frames are not the model's")
    clip = binary_cross_entropy(clip_probabilities, clip_targets, clip_pos_weight).mean()
    if bool(strong.any()):
        frame = binary_cross_entropy(frame_probabilities[strong], frame_targets[strong], frame_pos_weight).mean()
    else:
        frame = clip_probabilities.new_zeros(())
    return clip + frame_weight * frame, frame, clip


def class_pos_weights(clip_labels: np.ndarray, events: list, durations: np.ndarray, frame_seconds: float,
                      classes: list[str]) -> tuple[Tensor, Tensor]:
    """`trainer.class_weights=balanced` for the events task: each class's negatives / positives `(n_classes,)`
    over the train clips' weak labels `clip_labels` `(clips, n_classes)` (the clip term's pos_weight) and
    over the output frames of the strong train clips, `events` and `durations` (seconds) per strong clip
    (the frame term's); 1 for a class without positives."""
    positives, total = np.zeros(len(classes)), 0
    for clip_events, duration in zip(events, durations):
        n_frames = math.ceil(float(duration) / frame_seconds)
        positives += event_frame_targets(clip_events, n_frames, frame_seconds, classes).sum(axis=0)
        total += n_frames
    frames = np.where(positives > 0, (total - positives) / np.maximum(positives, 1), 1.0)
    return class_weights(clip_labels, len(classes), "balanced"), torch.tensor(frames, dtype=torch.float32)


class EventClassifier(Classifier):
    """`Classifier` for the events task: batches `(x, labels, frames, strong)` from `EventWindowDataset`, the
    loss of `event_loss` (module docstring). `frame_weight`: `trainer.frame_loss_weight`; `class_weights`
    and `frame_class_weights`: the clip and frame terms' pos_weight (`class_pos_weights`), or None."""

    def __init__(self, model: nn.Module, optimizer, n_classes: int, *args, frame_weight: float = 1.0,
                 frame_class_weights: Tensor | None = None, **kwargs):
        kwargs["multilabel"] = True
        super().__init__(model, optimizer, n_classes, *args, **kwargs)
        self.register_buffer("clip_pos_weight", kwargs.get("class_weights"), persistent=False)
        self.register_buffer("frame_pos_weight", frame_class_weights, persistent=False)
        self.frame_weight = float(frame_weight)
        self.val_frame_f1 = MultilabelF1Score(num_labels=n_classes, average="macro", threshold=0.5)
        self.train_frame_mean, self.val_frame_mean = MeanMetric(), MeanMetric()  # weighted by strong windows
        self.train_clip_mean, self.val_clip_mean = MeanMetric(), MeanMetric()

    def _augment(self, features: Tensor, labels: Tensor, frames: Tensor, strong: Tensor):
        """The training augmentation (no time shift) and mixup of windows, clip labels and frame targets."""
        features = self.augment.transform(features)
        if not self.augment.training or "mixup" not in self.augment.settings:
            return features, labels, frames, strong
        lam, partner = self.augment.draw_mixup(features)
        weights = lam.to(features).view(-1, 1, 1, 1)
        features = weights * features + (1 - weights) * features[partner]
        lam = lam.to(labels)
        labels = lam.view(-1, 1) * labels + (1 - lam.view(-1, 1)) * labels[partner]
        frames = lam.view(-1, 1, 1) * frames + (1 - lam.view(-1, 1, 1)) * frames[partner]
        strong = strong & (strong[partner] | (lam == 1))  # a window mixed with a weak one has no frame truth
        return features, labels, frames, strong

    def _step(self, batch, stage: str, metric) -> Tensor:
        x, y, frame_y, strong = batch
        clip_targets, frame_targets = y, frame_y
        features = self.frames(x)
        if stage == "train":
            features, clip_targets, frame_targets, strong = self._augment(features, y, frame_y, strong)
        if self.label_smoothing:
            clip_targets = clip_targets * (1 - self.label_smoothing) + self.label_smoothing / 2
            frame_targets = frame_targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        frame_p, clip_p = self.model.event_probabilities(features)
        loss, frame_loss, clip_loss = event_loss(frame_p, clip_p, frame_targets, clip_targets, strong,
                                                 self.frame_weight, self.clip_pos_weight, self.frame_pos_weight)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteError(self._why_non_finite(stage, loss, x, features))
        metric(clip_p.detach(), y.int())
        n = len(y)
        total, frames, clips = ((self.train_loss_mean, self.train_frame_mean, self.train_clip_mean)
                                if stage == "train" else (self.val_loss_mean, self.val_frame_mean, self.val_clip_mean))
        total.update(loss.detach(), weight=n)
        clips.update(clip_loss.detach(), weight=n)
        self.log(f"{stage}_loss", total, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{stage}_clip_loss", clips, on_step=False, on_epoch=True, batch_size=n)
        self.log(f"{stage}_{self.metric_name}", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if bool(strong.any()):  # a split without strong clips has no frame loss to log
            frames.update(frame_loss.detach(), weight=int(strong.sum()))
            self.log(f"{stage}_frame_loss", frames, on_step=False, on_epoch=True, batch_size=n)
        if stage == "val":  # 0 for a val split without strong clips
            if bool(strong.any()):
                self.val_frame_f1(frame_p[strong].detach().flatten(0, 1), frame_y[strong].int().flatten(0, 1))
            self.log("val_frame_f1", self.val_frame_f1, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss
