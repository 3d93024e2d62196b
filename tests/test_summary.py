"""Model summary: shapes match PyTorch, params and MACs add up, receptive fields by hand, CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audiocnn.cli import main
from audiocnn.config import compose_config, config_groups
from audiocnn.models import build_model
from audiocnn.models.blocks import conv_output_size
from audiocnn.models.summary import summarize

MODELS = config_groups()["model"]
WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _in_branch(name: str) -> bool:
    return "shortcut" in name or "downsample" in name


def _config_model(name: str, n_classes: int = 10):
    cfg = compose_config([f"model={name}"])
    model = build_model(cfg.model, n_classes=n_classes, n_bins=cfg.features.n_bins)
    return cfg, model


def _pytorch_feature_maps(model: nn.Module, n_bins: int, frames: int) -> list[tuple[int, ...]]:
    """(C, F, T) of every 4-D leaf output, in call order, collected with our own hooks."""
    seen = []

    def hook(_module, _inputs, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        if out.dim() == 4:
            seen.append(tuple(out.shape[1:]))

    empty_containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # no-ops, not layers
    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, empty_containers)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, n_bins, frames))
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("name", MODELS)
def test_feature_map_shapes_equal_pytorch_and_follow_the_output_size_formula(name):
    cfg, model = _config_model(name)
    n_bins, frames = cfg.features.n_bins, cfg.features.window_frames
    summary = summarize(model, n_bins, frames)
    rows = summary.rows
    assert [r.output_shape for r in rows if len(r.output_shape) == 3] == _pytorch_feature_maps(model, n_bins, frames)
    assert summary.input_shape == (1, n_bins, frames)

    previous = summary.input_shape  # the last (C, F, T) on the main chain
    checked = 0
    for row in rows:
        if _in_branch(row.name):
            continue
        module = model.get_submodule(row.name)
        if isinstance(module, WINDOWED):
            kernel, stride, padding = (nn.modules.utils._pair(v) for v in (
                module.kernel_size, module.stride, module.padding))
            dilation = nn.modules.utils._pair(getattr(module, "dilation", 1))
            expected = tuple(
                conv_output_size(previous[1 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1)
            )
            assert row.output_shape[1:] == expected, row.name
            checked += 1
        if len(row.output_shape) == 3:
            previous = row.output_shape
    assert checked >= len(cfg.model.get("blocks") or [None])  # at least one conv per block


@pytest.mark.parametrize("name", MODELS)
def test_params_add_up(name):
    _, model = _config_model(name)
    summary = summarize(model, 84, 64)
    total = sum(p.numel() for p in model.parameters())
    assert summary.total_params == total == sum(r.params for r in summary.rows)
    assert summary.trainable_params == total
    assert summary.total_macs == sum(r.macs for r in summary.rows) > 0


def test_trainable_params_leave_out_frozen_ones_and_mode_is_restored():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    for p in model[0].parameters():
        p.requires_grad_(False)
    model.train()
    summary = summarize(model, 8, 8)
    assert summary.total_params == 40 + 8 + 144 * 3 + 3
    assert summary.trainable_params == summary.total_params - 40
    assert model.training
    assert model[1].num_batches_tracked.item() == 0  # ran in eval mode: statistics untouched


def _fields(model: nn.Module, n_bins: int = 32, frames: int = 32):
    return [(r.rf_bins, r.rf_frames) for r in summarize(model, n_bins, frames).rows]


def test_receptive_field_of_a_hand_checkable_stack():
    # jumps 1, 1, 2 going into the layers after the first: rf 3, 5, 5 + 1*1 = 6, 6 + 2*2 = 10
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=1),
    )
    assert _fields(model) == [(3, 3), (5, 5), (6, 6), (6, 6), (10, 10)]


def test_receptive_field_with_dilation_and_stride():
    model = nn.Sequential(
        nn.Conv2d(1, 1, 3, dilation=(2, 1)),  # k_eff 5 x 3
        nn.Conv2d(1, 1, 3, stride=2),  # + 2 * 1: jump becomes 2
        nn.Conv2d(1, 1, 3, dilation=2),  # k_eff 5: + 4 * 2
        nn.AvgPool2d((1, 2)),  # frames only: + 1 * 2, jump 4
        nn.Conv2d(1, 1, (1, 2)),  # frames only: + 1 * 4
    )
    assert _fields(model) == [(5, 3), (7, 5), (15, 13), (15, 15), (15, 19)]


def test_receptive_field_of_an_adaptive_pool_is_its_widest_window():
    # conv 3x3 on 8 x 10 -> 6 x 8; adaptive pool to 4 bins: windows [0,2) [1,3) [3,5) [4,6), widest 2
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d((4, None)))
    assert _fields(model, 8, 10) == [(3, 3), (4, 3)]


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding=1))
        self.shortcut = nn.Sequential(nn.Conv2d(1, 2, 1, stride=2), nn.BatchNorm2d(2))

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


def test_residual_shortcut_is_traced_from_the_block_input_and_does_not_advance_the_chain():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), _Residual(), nn.Conv2d(2, 2, 3, padding=1))
    # main path: 3, then stride-2 conv 3 + 2 = 5 (jump 2), then 5 + 2 * 2 = 9; after the block
    # 9 + 2 * 2 = 13. The 1x1 shortcut sees the block input: 3. Advancing the chain through
    # the shortcut would have made the jump 4 and the last field 17.
    assert _fields(model) == [(3, 3), (5, 5), (9, 9), (3, 3), (3, 3), (13, 13)]


def test_macs_of_a_conv_and_a_linear_follow_the_hand_formula():
    conv = nn.Sequential(nn.Conv2d(1, 8, (3, 5), padding=1))
    (row,) = summarize(conv, 20, 30).rows
    assert row.output_shape == (8, 20, 28)
    assert row.macs == 8 * 20 * 28 * 1 * 3 * 5

    grouped = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 8, 3, groups=2))
    assert summarize(grouped, 10, 10).rows[1].macs == 8 * 8 * 8 * (4 // 2) * 3 * 3

    linear = nn.Sequential(nn.Flatten(), nn.Linear(12 * 7, 5))
    rows = summarize(linear, 12, 7).rows
    assert [r.output_shape for r in rows] == [(84,), (5,)]
    assert rows[1].macs == 84 * 5 and rows[1].rf_bins is None


def test_rnn_row_has_a_time_by_hidden_shape_and_gate_macs():
    cfg, model = _config_model("crnn_gru")
    summary = summarize(model, cfg.features.n_bins, cfg.features.window_frames)
    (row,) = [r for r in summary.rows if r.kind == "GRU"]
    rnn = model.get_submodule(row.name)
    steps = cfg.features.window_frames // 4  # the config's blocks pool time twice by 2
    assert row.output_shape == (steps, rnn.hidden_size * 2)
    assert row.macs == steps * 2 * 3 * (rnn.input_size * rnn.hidden_size + rnn.hidden_size**2)


class _Recurrent(nn.Module):
    """(1, 1, F, T) -> a 2-layer bidirectional LSTM over T with F features, time first."""

    def __init__(self, n_bins: int):
        super().__init__()
        self.rnn = nn.LSTM(n_bins, 8, num_layers=2, bidirectional=True)
        self.relu = nn.ReLU()

    def forward(self, x):
        out, _ = self.rnn(self.relu(x)[0, 0].T.unsqueeze(1))  # (T, 1, F)
        return self.relu(out[-1])  # (1, 16): the same ReLU a second time


def test_lstm_macs_sum_layers_and_directions_and_a_reused_module_counts_params_once():
    summary = summarize(_Recurrent(6), 6, 5)
    assert [(r.name, r.output_shape) for r in summary.rows] == [
        ("relu", (1, 6, 5)), ("rnn", (5, 16)), ("relu", (16,))  # time-first RNN: T x H without the batch
    ]
    per_step = 2 * 4 * (6 * 8 + 8 * 8) + 2 * 4 * (16 * 8 + 8 * 8)
    assert summary.rows[1].macs == summary.total_macs == 5 * per_step
    assert [r.params for r in summary.rows] == [0, summary.total_params, 0]


def test_cli_prints_the_table(capsys):
    assert main(["summary", "model=cnn", "--classes", "7"]) == 0
    out = capsys.readouterr().out
    cfg, model = _config_model("cnn", n_classes=7)
    summary = summarize(model, cfg.features.n_bins, cfg.features.window_frames)
    convs = [r for r in summary.rows if r.kind == "Conv2d"]
    assert len(convs) == len(cfg.model.blocks)
    for row in convs:
        assert " x ".join(map(str, row.output_shape)) in out
    assert "Model: cnn" in out
    assert f"1 x {cfg.features.n_bins} x {cfg.features.window_frames}" in out
    assert f"Total params: {summary.total_params:,}" in out
    assert "Total multiply-adds:" in out


def test_cli_rejects_a_bad_setting_in_one_line(capsys):
    assert main(["summary", "model=cnn", "features.window_frames=4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: model.blocks[") and "time" in captured.err
    assert captured.err.count("\n") == 1
