"""The CRNN answers per frame for sound event detection: frame logits from the head on every
recurrent step, clip probabilities pooled from the frames' (linear-softmax or attention), and the
output frame rate from the conv stack's time stride."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from audiocnn.config import compose_config
from audiocnn.models.blocks import BlockSpec
from audiocnn.models import build_model
from audiocnn.data.events import output_frame_seconds
from audiocnn.models.event_pool import EventPool, time_stride


def test_linear_softmax_weighs_each_frame_by_its_own_probability():
    p = torch.tensor([[[0.1, 0.5], [0.9, 0.5], [0.0, 0.5], [0.0, 0.5]]])  # (batch 1, 4 frames, 2 classes)
    pooled = EventPool("linear_softmax", width=8, n_classes=2)(p, torch.zeros(1, 4, 8))
    # sum p^2 / sum p: (0.01 + 0.81) / 1.0 for the first class; a constant sequence pools to itself
    torch.testing.assert_close(pooled, torch.tensor([[0.82, 0.5]]))
    assert not list(EventPool("linear_softmax", 8, 2).parameters())
    silent = EventPool("linear_softmax", 8, 2)(torch.zeros(1, 4, 2), torch.zeros(1, 4, 8))
    assert torch.equal(silent, torch.zeros(1, 2))  # no division by zero on a silent clip


def test_attention_pooling_is_a_weighted_mean_of_the_frames_learnt_per_class():
    torch.manual_seed(0)
    pool = EventPool("attention", width=8, n_classes=3)
    outputs = torch.randn(2, 5, 8)
    constant = torch.full((2, 5, 3), 0.3)
    torch.testing.assert_close(pool(constant, outputs), torch.full((2, 3), 0.3))  # weights sum to 1 over time
    p = torch.rand(2, 5, 3)
    pooled = pool(p, outputs)
    assert bool(((pooled >= p.amin(dim=1) - 1e-6) & (pooled <= p.amax(dim=1) + 1e-6)).all())
    pooled.sum().backward()
    assert pool.attention.weight.grad.abs().sum() > 0


def test_the_output_frame_rate_is_the_hop_times_the_conv_stacks_time_stride():
    cfg = compose_config(["model=crnn_gru", "data=fsdd"])
    specs = [BlockSpec.from_config(b) for b in OmegaConf.to_container(cfg.model.blocks)]
    assert time_stride(specs) == 4  # two 2x2 max pools keep 1/4 of the frames; the [2, 1] pool keeps time
    assert output_frame_seconds(128, 8000, time_stride(specs)) == pytest.approx(0.064)
    strided = [BlockSpec.from_config({"channels": 4, "stride": [1, 3], "pool_size": [2, 2], "pool_stride": [2, 5]}),
               BlockSpec.from_config({"channels": 4, "pool": "none", "pool_size": [2, 7]})]
    assert time_stride(strided) == 15  # a pool of `none` does not stride, whatever its size


@pytest.mark.parametrize("event_pool", ["linear_softmax", "attention"])
def test_the_crnn_answers_per_output_frame_and_pools_them_to_the_clip(event_pool):
    cfg = compose_config(["model=crnn_gru", "data=fsdd", f"model.event_pool={event_pool}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5, cfg.features.n_bins, cfg.features.top_db).eval()
    window = int(cfg.features.window_frames)
    x = torch.randn(3, 1, cfg.features.n_bins, window)
    frames, clip = model.event_probabilities(x)
    specs = [BlockSpec.from_config(b) for b in OmegaConf.to_container(cfg.model.blocks)]
    assert frames.shape == (3, window // time_stride(specs), 5) and clip.shape == (3, 5)
    assert bool(((frames >= 0) & (frames <= 1)).all()) and bool(((clip >= 0) & (clip <= 1)).all())
    # The frame logits are the clip head on every step: with the default mean over time their mean
    # over the frames is the clip logits forward() gives (a linear head commutes with the mean).
    logits, _ = model.frame_logits(model.forward_features(x))
    torch.testing.assert_close(logits.mean(dim=1), model(x), atol=1e-5, rtol=1e-5)
    model.reset_classifier(7)
    assert model.event_probabilities(x)[1].shape == (3, 7)
