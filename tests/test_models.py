"""Models: block specs, shape arithmetic, the CNN and CRNN families, and `build_model`."""

from __future__ import annotations

import itertools

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from audiocnn.config import compose_config, config_groups
from audiocnn.models import build_model
from audiocnn.errors import ShapeError
from audiocnn.models.blocks import (BlockSpec, ConvBlock, PeakNormalize, ResidualBlock, conv_output_size,
                                    trace_shapes)
from audiocnn.models.crnn import CRNN
from audiocnn.training.optim import optimizer_settings

N_CLASSES = 5
MODELS = config_groups()["model"]


def _model_and_input(name: str, batch: int = 3):
    cfg = compose_config([f"model={name}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, n_classes=N_CLASSES, n_bins=cfg.features.n_bins).eval()
    x = torch.randn(batch, 1, cfg.features.n_bins, cfg.features.window_frames)
    return cfg, model, x


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_gives_batch_by_classes_logits(name):
    _, model, x = _model_and_input(name)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, N_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_trace_shapes_matches_the_sizes_pytorch_produces(name):
    cfg, model, x = _model_and_input(name, batch=2)
    blocks = [m for m in model.backbone if isinstance(m, (ConvBlock, ResidualBlock))]
    assert len(blocks) == len(cfg.model.blocks)
    seen = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[2:]))) for b in blocks]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    expected = trace_shapes(model.specs, (cfg.features.n_bins, cfg.features.window_frames))
    assert seen == [tuple(s) for s in expected]


def _grid():
    for size, kernel, stride, padding, dilation in itertools.product(
        (1, 4, 7, 16, 33), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2)
    ):
        effective = dilation * (kernel - 1) + 1
        if size + 2 * padding >= effective:  # torch refuses an empty output
            yield size, kernel, stride, padding, dilation


def test_conv_output_size_matches_torch_conv_and_pooling():
    checked = 0
    for size, kernel, stride, padding, dilation in _grid():
        expected = (size - (dilation * (kernel - 1) + 1) + 2 * padding) // stride + 1
        got = conv_output_size(size, kernel, stride, padding, dilation)
        assert got == expected
        x = torch.zeros(1, 1, size, size + 3)
        conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
        out = conv(x).shape[2:]
        assert out == (got, conv_output_size(size + 3, kernel, stride, padding, dilation)), (
            size, kernel, stride, padding, dilation)
        if padding <= kernel // 2:  # torch's pooling limit on padding
            pooled = nn.MaxPool2d(kernel, stride=stride, padding=padding, dilation=dilation)(x).shape[2:]
            assert pooled[0] == got, (size, kernel, stride, padding, dilation)
        checked += 1
    assert checked > 200


def test_shape_error_names_block_axis_sizes_and_layer():
    specs = [BlockSpec.from_config({"channels": 4, "kernel": 3, "padding": 1, "pool": "max", "pool_size": 2})] * 3
    specs.append(BlockSpec.from_config({"channels": 4, "kernel": 3, "stride": 2, "padding": 0, "pool": "none"}))
    # time: 16 -> 8 -> 4 -> 2, then a 3-wide unpadded conv leaves nothing.
    with pytest.raises(ShapeError) as error:
        trace_shapes(specs, (64, 16))
    assert str(error.value) == "model.blocks[3]: time 2 -> 0 with kernel 3, stride 2, padding 0"
    # PyTorch agrees that this stack cannot run.
    model = nn.Sequential(*[ConvBlock(1 if i == 0 else 4, s) for i, s in enumerate(specs)]).eval()
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 1, 64, 16))


def test_shape_error_names_a_pooling_layer():
    specs = [BlockSpec.from_config({"channels": 4, "kernel": 3, "padding": 1, "pool": "avg", "pool_size": [2, 4]})]
    with pytest.raises(ShapeError, match=r"^model\.blocks\[0\]: time 3 -> 0 with pooling kernel 4, stride 4, "
                                         r"padding 0$"):
        trace_shapes(specs, (8, 3))


def test_block_spec_rejects_unknown_keys_and_bad_pool_names():
    with pytest.raises(ValueError, match=r"unknown keys \['kernal'\]; allowed: .*'kernel'"):
        BlockSpec.from_config({"channels": 8, "kernal": 3})
    with pytest.raises(ValueError, match=r"pool='median'; allowed: max, avg, none"):
        BlockSpec.from_config({"channels": 8, "pool": "median"})
    with pytest.raises(ValueError, match="kernel must be an int or a \\[frequency, time\\] pair"):
        BlockSpec.from_config({"channels": 8, "kernel": [3, 3, 3]})


def _layers(block: ConvBlock, kind: type) -> list[nn.Module]:
    return [m for m in block if isinstance(m, kind)]


def test_block_settings_shape_the_built_layers():
    spec = BlockSpec.from_config({
        "channels": 6, "kernel": [5, 3], "stride": [2, 1], "padding": [2, 0], "dilation": [1, 2],
        "pool": "avg", "pool_size": [3, 2], "pool_stride": [1, 2], "batch_norm": False, "dropout": 0.25,
    })
    block = ConvBlock(2, spec)
    (conv,) = _layers(block, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels) == (2, 6)
    assert conv.kernel_size == (5, 3) and conv.stride == (2, 1)
    assert conv.padding == (2, 0) and conv.dilation == (1, 2)
    assert conv.bias is not None  # no batch norm to absorb the bias
    assert not _layers(block, nn.BatchNorm2d)
    (pool,) = _layers(block, nn.AvgPool2d)
    assert tuple(pool.kernel_size) == (3, 2) and tuple(pool.stride) == (1, 2)
    assert not _layers(block, nn.MaxPool2d)
    (dropout,) = _layers(block, nn.Dropout2d)
    assert dropout.p == 0.25
    # The sizes the layers produce are the sizes the spec predicts.
    out = block.eval()(torch.zeros(1, 2, 40, 30))
    assert tuple(out.shape) == (1, 6, *spec.layer_sizes((40, 30))[-1][-1])


def test_block_defaults_and_pool_variants():
    default = ConvBlock(1, BlockSpec.from_config({"channels": 4}))
    (conv,) = _layers(default, nn.Conv2d)
    assert conv.bias is None and len(_layers(default, nn.BatchNorm2d)) == 1
    (pool,) = _layers(default, nn.MaxPool2d)
    assert pool.kernel_size == (2, 2) and pool.stride == (2, 2)  # pool_stride defaults to pool_size
    assert not _layers(default, nn.Dropout2d)

    none = ConvBlock(1, BlockSpec.from_config({"channels": 4, "pool": "none"}))
    assert not _layers(none, nn.MaxPool2d) and not _layers(none, nn.AvgPool2d)
    assert none.eval()(torch.zeros(1, 1, 9, 7)).shape == (1, 4, 9, 7)


CRNN_BLOCKS = [
    {"channels": 8, "kernel": 3, "padding": 1, "pool": "max", "pool_size": [2, 1]},
    {"channels": 8, "kernel": 3, "padding": 1, "pool": "max", "pool_size": [2, 1]},
]


def _crnn(**kwargs) -> CRNN:
    torch.manual_seed(0)
    return CRNN(n_classes=4, n_bins=16, blocks=CRNN_BLOCKS, hidden_size=6, dropout=0.0, **kwargs).eval()


def test_crnn_output_depends_on_the_order_of_frames():
    model = _crnn()
    x = torch.randn(2, 1, 16, 20)
    with torch.no_grad():
        forward, backward = model(x), model(x.flip(-1))
    assert not torch.allclose(forward, backward, atol=1e-4)


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("temporal_pool", ["last", "mean", "max", "attention"])
def test_crnn_rnn_kinds_and_temporal_pools(rnn, bidirectional, temporal_pool):
    model = _crnn(rnn=rnn, bidirectional=bidirectional, temporal_pool=temporal_pool)
    assert isinstance(model.rnn, {"gru": nn.GRU, "lstm": nn.LSTM}[rnn])
    assert model.rnn.bidirectional is bidirectional
    x = torch.randn(3, 1, 16, 10)
    with torch.no_grad():
        logits = model(x)
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
        outputs, _ = model.rnn(model.backbone(x).flatten(1, 2).transpose(1, 2))  # (batch, T, H * dirs)
    assert logits.shape == (3, 4)
    assert embedding.shape == (3, 6 * (2 if bidirectional else 1))
    if temporal_pool == "mean":
        expected = outputs.mean(dim=1)
    elif temporal_pool == "max":
        expected = outputs.amax(dim=1)
    elif temporal_pool == "attention":
        weights = torch.softmax(model.attention(outputs), dim=1)
        expected = (weights * outputs).sum(dim=1)
    elif bidirectional:  # forward direction ends at the last frame, backward at the first
        expected = torch.cat([outputs[:, -1, :6], outputs[:, 0, 6:]], dim=1)
    else:
        expected = outputs[:, -1]
    torch.testing.assert_close(embedding, expected)


@pytest.mark.parametrize("model, change, message", [
    ("crnn_gru", {"rnn": "transformer"}, "model.rnn=transformer: allowed: 'gru' or 'lstm'"),
    ("crnn_gru", {"temporal_pool": "median"}, "model.temporal_pool=median: allowed: 'last', 'mean', 'max' or 'attention'"),
    ("crnn_gru", {"event_pool": "max"}, "model.event_pool=max: allowed: 'linear_softmax' or 'attention'"),
    ("crnn_gru", {"clip_output": "frames"}, "model.clip_output=frames: allowed: 'head' or 'event_pool'"),
    ("crnn_gru", {"global_pool": "avg"}, "model.global_pool: unknown key; allowed: _target_, name, blocks"),
    ("cnn", {"global_pool": "sum"}, "model.global_pool=sum: allowed: 'avg', 'max', 'catavgmax' or 'grid'"),
    ("cnn", {"grid_size": [3]}, "model.grid_size=[3]: must hold at least 2 item(s)"),
    ("cnn", {"norm": {"type": "pcen", "r": 0}}, "model.norm.r=0: must be > 0"),
])
def test_the_model_schema_refuses_an_unknown_option_of_its_class(model, change, message):
    """Each model class's options are its schema's (`models.settings`), for conf and model files alike."""
    from audiocnn.errors import ConfigError
    from audiocnn.models.settings import model_settings

    values = {**OmegaConf.to_container(compose_config([f"model={model}"]).model, resolve=True), **change}
    with pytest.raises(ConfigError) as error:
        model_settings(values)
    assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize("global_pool, width", [("avg", 8), ("max", 8), ("catavgmax", 16)])
def test_cnn_global_pool_width(global_pool, width):
    from audiocnn.models.cnn import CNN

    model = CNN(n_classes=3, n_bins=16, blocks=CRNN_BLOCKS, global_pool=global_pool).eval()
    x = torch.randn(2, 1, 16, 12)
    with torch.no_grad():
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
        features = model.backbone(x).flatten(2)
    assert embedding.shape == (2, width)
    if global_pool == "max":
        torch.testing.assert_close(embedding, features.amax(dim=2))
    assert model(x).shape == (2, 3)


def test_peak_normalize_puts_the_peak_at_zero_and_floors_top_db_below():
    x = torch.tensor([[[[-2.0, -3.0], [-30.0, -2.5]]]])  # (1, 1, 2 bins, 2 frames), peak -2
    out = PeakNormalize(top_db=20).eval()(x)  # 20 dB = ln(10) in natural-log magnitude
    floor = -torch.log(torch.tensor(10.0))
    assert torch.allclose(out, torch.stack([torch.tensor(0.0), torch.tensor(-1.0), floor, torch.tensor(-0.5)]).view(1, 1, 2, 2))


@pytest.mark.parametrize("name", ["cnn", "crnn_gru"])
def test_top_db_makes_the_model_blind_to_level_and_to_noise_far_below_the_peak(name):
    cfg = compose_config([f"model={name}", "features.top_db=60"])
    torch.manual_seed(0)
    model = build_model(cfg.model, N_CLASSES, cfg.features.n_bins, top_db=cfg.features.top_db).eval()
    x = torch.randn(2, 1, cfg.features.n_bins, cfg.features.window_frames)
    quiet_floor = x.clone()
    quiet_floor[..., :4] = -40.0  # a silent stretch at a lower noise floor (>60 dB below the peak either way)
    x[..., :4] = -30.0
    with torch.no_grad():
        assert torch.allclose(model(x), model(x - 3.0), atol=1e-5)  # 26 dB quieter recording: same logits
        assert torch.allclose(model(x), model(quiet_floor), atol=1e-5)
        raw = build_model(cfg.model, N_CLASSES, cfg.features.n_bins).eval()
        raw.load_state_dict(model.state_dict())  # same weights (PeakNormalize has none), no normalisation
        assert not torch.allclose(raw(x), raw(x - 3.0), atol=1e-3)


@pytest.mark.parametrize("size, grid", [((17, 29), (5, 5)), ((5, 5), (5, 5)), ((3, 7), (5, 5)), ((21, 30), (3, 3)),
                                        ((1, 1), (3, 3)), ((40, 11), (4, 6))])
def test_grid_pooling_averages_adaptive_average_pooling_cells(size, grid):
    """`global_pool: grid` (lenet, alexnet) averages the cells of `nn.AdaptiveAvgPool2d`, as matrix products
    an ONNX export takes at any feature-map size (the exporter refuses adaptive pooling of an unknown size)."""
    from audiocnn.models.cnn import GridPool

    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(GridPool(grid)(x), nn.AdaptiveAvgPool2d(grid)(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_on_multilabel_targets_and_scores_a_sigmoid_per_class(name):
    """Multi-label data (`task: multilabel`) with every model of the zoo: one real Lightning step of
    `Classifier(multilabel=True)` (binary cross-entropy on multi-hot targets) moves every trainable
    weight, and the window scorer answers each class's own probability."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from audiocnn.models.scorer import WindowScorer
    from audiocnn.training.module import Classifier

    _, model, x = _model_and_input(name, batch=4)
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = Classifier(model, optimizer_settings({"_target_": "torch.optim.SGD", "name": "sgd", "lr": 0.1}), N_CLASSES,
                        multilabel=True)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x, targets), batch_size=4), DataLoader(TensorDataset(x, targets), batch_size=4))
    moved = [k for k, p in model.named_parameters() if p.requires_grad and not torch.equal(before[k], p.detach())]
    assert moved and set(moved) >= {k for k, _ in model.named_parameters() if k.startswith("head.")}
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    probabilities = WindowScorer(model.eval(), multilabel=True).score(x)
    assert probabilities.shape == (4, N_CLASSES) and bool(((probabilities > 0) & (probabilities < 1)).all())
    assert not torch.allclose(probabilities.sum(dim=1), torch.ones(4))  # not a softmax


@pytest.mark.parametrize("name", ["cnn", "crnn_gru", "resnet"])
def test_folding_the_batch_norms_into_the_convs_keeps_the_outputs(name):
    """`fold_batch_norms` (eager scoring): every conv's norm folded, the outputs those of the unfolded model."""
    import copy

    from audiocnn.models.blocks import fold_batch_norms

    cfg = compose_config([f"model={name}", "data=fsdd"])
    torch.manual_seed(0)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), 10, cfg.features.n_bins, cfg.features.top_db)
    for module in model.modules():  # trained-looking statistics: folding the defaults would change nothing
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(4, 1, cfg.features.n_bins, cfg.features.window_frames)
    folded = fold_batch_norms(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    norms = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 and norms[0] is folded.backbone[0]  # only the input norm, which follows no conv
