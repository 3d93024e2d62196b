"""Optimisation recipe: optimizers, schedules, class weights, precision, loss options, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from audiocnn.config import ConfigError, compose_config, validate_config
from audiocnn.training.module import Classifier
from audiocnn.training.optim import (SchedulerSettings, build_optimizer, build_scheduler, class_weights, optimizer_settings,
                                     resolve_precision, scheduler_settings)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def _optimizer(name: str, *overrides: str):
    cfg = compose_config([f"optimizer={name}", *overrides])
    return build_optimizer(Tiny(), optimizer_settings(OmegaConf.to_container(cfg.optimizer))), cfg


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW),
                                       ("adadelta", torch.optim.Adadelta)])
def test_optimizers_build_with_backbone_and_head_groups(name, cls):
    optimizer, cfg = _optimizer(name, "optimizer.backbone_lr_scale=0.1")
    assert isinstance(optimizer, cls)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([cfg.optimizer.lr, cfg.optimizer.lr * 0.1])


def test_sgd_is_alexnets_recipe_with_optional_nesterov():
    optimizer, _ = _optimizer("sgd")
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 5e-4 and not group["nesterov"]
    optimizer, _ = _optimizer("sgd", "optimizer.nesterov=true")
    assert optimizer.param_groups[0]["nesterov"]


def _lrs(optimizer, schedule, steps: int, metric=None) -> list[list[float]]:
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule["scheduler"].step(*([metric] if metric is not None else []))
    return seen


def test_cosine_warms_up_linearly_then_decays():
    optimizer, _ = _optimizer("adamw", "optimizer.lr=1.0")
    cfg = scheduler_settings(OmegaConf.to_container(compose_config(["scheduler=cosine"]).scheduler))
    schedule = build_scheduler(optimizer, cfg, max_epochs=13, total_steps=100)
    assert schedule["interval"] == "epoch"
    lrs = [lr[0] for lr in _lrs(optimizer, schedule, 13)]
    assert lrs[0] == pytest.approx(0.1) and lrs[3] == pytest.approx(1.0)  # 3 warm-up epochs from 0.1
    assert lrs[1] < lrs[2] < lrs[3] and all(a > b for a, b in zip(lrs[3:], lrs[4:]))
    assert lrs[-1] < 0.05


def test_onecycle_steps_per_batch_and_keeps_the_group_ratio():
    optimizer, _ = _optimizer("sgd", "optimizer.lr=0.1", "optimizer.backbone_lr_scale=0.5")
    schedule = build_scheduler(optimizer, scheduler_settings(OmegaConf.to_container(compose_config(["scheduler=onecycle"]).scheduler)), 5, total_steps=50)
    assert schedule["interval"] == "step"
    lrs = np.array(_lrs(optimizer, schedule, 50))
    assert lrs[:, 0].max() == pytest.approx(0.1, rel=1e-3) and lrs[:, 0].argmax() == 14  # peak at 30% of 50 steps
    np.testing.assert_allclose(lrs[:, 1], lrs[:, 0] * 0.5)


def test_plateau_divides_by_ten_when_val_loss_stalls():
    optimizer, _ = _optimizer("sgd", "optimizer.lr=0.1")
    schedule = build_scheduler(optimizer, scheduler_settings(OmegaConf.to_container(compose_config(["scheduler=plateau"]).scheduler)), 20, 100)
    assert schedule["monitor"] == "val_loss"
    lrs = [lr[0] for lr in _lrs(optimizer, schedule, 7, metric=1.0)]
    assert lrs[:5] == pytest.approx([0.1] * 5) and lrs[6] == pytest.approx(0.01)
    assert build_scheduler(optimizer, SchedulerSettings(), 1, 1) is None


def test_balanced_class_weights_from_train_labels():
    weights = class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])  # n / (classes * count); absent class 0
    assert class_weights(np.array([0, 1]), 2, "none") is None


def test_classifier_loss_uses_weights_and_label_smoothing():
    module = Classifier(Tiny(), optimizer_settings(OmegaConf.to_container(compose_config([]).optimizer)), 3, label_smoothing=0.1,
                        class_weights=torch.tensor([1.0, 2.0, 3.0]))
    assert module.loss.label_smoothing == 0.1 and module.loss.weight.tolist() == [1.0, 2.0, 3.0]


def test_bf16_falls_back_to_32_bit_without_a_gpu(capsys):
    assert resolve_precision("32-true", "cpu") == "32-true"
    if not torch.cuda.is_available():
        assert resolve_precision("bf16-mixed", "auto") == "32-true"
        assert "needs a CUDA GPU" in capsys.readouterr().out
    assert resolve_precision("bf16-mixed", "cpu") == "32-true"


@pytest.mark.parametrize("overrides, message", [
    (["scheduler=plateau", "scheduler.factor=2"], r"scheduler\.factor=2"),
    (["scheduler=cosine", "+scheduler.patience=3"], r"scheduler\.patience: not a setting of scheduler cosine"),
    (["trainer.precision=16"], r"trainer\.precision=16: allowed: 32-true, 32, bf16-mixed"),
    (["trainer.class_weights=inverse"], r"trainer\.class_weights=inverse: allowed: 'none' or 'balanced'"),
    (["trainer.label_smoothing=1.0"], r"trainer\.label_smoothing=1\.0"),
    (["trainer.gradient_clip_val=-1"], r"trainer\.gradient_clip_val=-1"),
    (["evaluate.top_k=[0]"], r"evaluate\.top_k"),
])
def test_bad_optimisation_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_every_scheduler_and_optimizer_config_validates():
    for scheduler in ("none", "plateau", "cosine", "onecycle"):
        for optimizer in ("sgd", "adamw", "adadelta"):
            validate_config(compose_config([f"scheduler={scheduler}", f"optimizer={optimizer}"]))
