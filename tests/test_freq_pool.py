"""Frequency poolings (models/freq_pool.py): shapes, invariance to a shift along frequency, order of movement."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from audiocnn.config import compose_config
from audiocnn.errors import BundleError
from audiocnn.models import build_model
from audiocnn.models.bundle import load_bundle, save_bundle
from audiocnn.models.crnn import CRNN
from audiocnn.models.freq_pool import (FREQ_POOLS, AttentionPool, MaxCentroidPool, build_freq_pool,
                                       freq_pool_width)

B, C, F, T = 2, 3, 24, 7


def _content(floor: float = 0.0) -> torch.Tensor:
    """(B, C, F, T): random activity in bins 4..11, `floor` elsewhere."""
    torch.manual_seed(0)
    x = torch.full((B, C, F, T), floor)
    x[:, :, 4:12] = floor + torch.rand(B, C, 8, T) * 3
    return x


@pytest.mark.parametrize("name", FREQ_POOLS)
def test_each_pooling_maps_b_c_f_t_to_b_t_d(name):
    pool = build_freq_pool(name, C, F)
    out = pool(_content())
    assert out.shape == (B, T, freq_pool_width(name, C, F))
    assert freq_pool_width(name, C, F) == {"flatten": C * F, "max_centroid": 2 * C}.get(name, C)


@pytest.mark.parametrize("name", ["max", "max_centroid", "attention"])
@pytest.mark.parametrize("floor", [0.0, -2.5])
@pytest.mark.parametrize("shift", [1, 5, 9])
def test_shift_invariant_poolings_ignore_a_shift_of_the_whole_clip_along_frequency(name, floor, shift):
    torch.manual_seed(1)
    pool = build_freq_pool(name, C, F).eval()
    x = _content(floor)
    shifted = torch.roll(x, shifts=shift, dims=2)  # the content stays inside: bins 4+shift..11+shift
    with torch.no_grad():
        torch.testing.assert_close(pool(shifted), pool(x), atol=1e-5, rtol=1e-5)


def test_flatten_keeps_pitch_height():
    pool = build_freq_pool("flatten", C, F)
    x = _content()
    assert not torch.allclose(pool(torch.roll(x, 5, dims=2)), pool(x))
    torch.testing.assert_close(pool(x)[0, 2], x[0, :, :, 2].flatten())  # (C * F) at frame 2, channel-major


def _glide(direction: int) -> torch.Tensor:
    """(1, 1, F, T): one bin of activity moving one bin per frame, up (+1) or down (-1)."""
    x = torch.zeros(1, 1, F, T)
    for t in range(T):
        x[0, 0, 8 + direction * t if direction > 0 else 8 + (T - 1) - t, t] = 1.0
    return x


def test_max_centroid_tells_a_rising_from_a_falling_pattern_which_max_cannot():
    rising, falling = _glide(+1), _glide(-1)
    assert torch.equal(build_freq_pool("max", 1, F)(rising), build_freq_pool("max", 1, F)(falling))
    pool = MaxCentroidPool()
    up, down = pool(rising)[0, :, 1], pool(falling)[0, :, 1]  # (T,) relative centroid, in units of F
    assert torch.all(up.diff() > 0) and torch.all(down.diff() < 0)
    torch.testing.assert_close(up, torch.arange(T) / F - (T - 1) / 2 / F)
    torch.testing.assert_close(up.sum(), torch.tensor(0.0), atol=1e-5, rtol=0)  # relative to the clip's mean


def test_max_centroid_gives_zero_for_frames_without_activity():
    x = _glide(+1)
    x[..., 3] = 0.7  # flat over frequency: no position
    assert MaxCentroidPool()(x)[0, 3, 1] == 0


def test_attention_weights_sum_to_one_over_frequency():
    torch.manual_seed(0)
    pool = AttentionPool(C)
    weights = pool.weights(_content())
    assert weights.shape == (B, C, F, T) and torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(B, C, T))
    torch.testing.assert_close(pool(_content()), (weights * _content()).sum(dim=2).transpose(1, 2))


BLOCKS = [{"channels": 4, "kernel": 3, "padding": 1, "pool": "max", "pool_size": [2, 1]},
          {"channels": 4, "kernel": 3, "padding": 1, "pool": "max", "pool_size": [2, 1]}]


def _crnn(freq_pool: str) -> CRNN:
    torch.manual_seed(0)
    return CRNN(n_classes=3, n_bins=48, blocks=BLOCKS, hidden_size=5, dropout=0.0, freq_pool=freq_pool).eval()


@pytest.mark.parametrize("freq_pool, invariant", [("flatten", False), ("max", True), ("attention", True)])
def test_a_crnn_with_a_shift_invariant_pooling_gives_the_same_logits_for_a_transposed_input(freq_pool, invariant):
    """A shift by a multiple of the stack's frequency stride (4), content away from the edges."""
    x = torch.zeros(2, 1, 48, 12)
    x[:, :, 12:20] = torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    model = _crnn(freq_pool)
    with torch.no_grad():
        same = torch.allclose(model(torch.roll(x, 16, dims=2)), model(x), atol=1e-5)
    assert same is invariant


@pytest.mark.parametrize("freq_pool", FREQ_POOLS)
def test_each_freq_pool_goes_through_a_bundle_and_back(freq_pool, tmp_path):
    cfg = compose_config(["model=crnn_gru", f"model.freq_pool={freq_pool}"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 3, cfg.features.n_bins, None).eval()
    save_bundle(net, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features), ["a", "b", "c"],
                tmp_path / "model.pt")
    loaded, bundle = load_bundle(tmp_path)
    assert bundle["model"]["freq_pool"] == freq_pool
    x = torch.randn(2, 1, cfg.features.n_bins, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_a_bundle_with_an_unknown_freq_pool_is_refused_naming_the_key(tmp_path):
    cfg = compose_config(["model=crnn_gru"])
    net = build_model(cfg.model, 3, cfg.features.n_bins, None)
    save_bundle(net, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features), ["a", "b", "c"],
                tmp_path / "model.pt")
    bundle = torch.load(tmp_path / "model.pt", weights_only=True)
    bundle["model"]["freq_pool"] = "median"
    torch.save(bundle, tmp_path / "model.pt")
    with pytest.raises(BundleError, match=r"model.freq_pool=median: allowed: 'flatten', 'max', 'attention'"):
        load_bundle(tmp_path)
