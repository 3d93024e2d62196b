"""Transfer learning: pre-train on the demo, fine-tune on another class set with a frozen backbone."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
import torch

from audiocnn.models import build_model
from audiocnn.training.module import Classifier
from audiocnn.models.bundle import load_bundle as load_trained, load_state
from audiocnn.training.optim import build_optimizer, optimizer_settings
from tests.conftest import train
from audiocnn.training.transfer import TransferReport, freeze, load_matching, parameter_groups
from tests.conftest import tiny_config

SUBSET = "[pluck,bell,organ]"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A cnn trained on all 8 demo classes, logged to MLflow with its model."""
    root = tmp_path_factory.mktemp("pretrain")
    cfg = tiny_config(root, "model=cnn", "tracking.log_model=true")
    summary = train(cfg)
    return cfg, summary


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def test_frozen_backbone_stays_and_new_head_trains(pretrained, tmp_path):
    pre_cfg, _ = pretrained
    source = f"{pre_cfg.paths.models}/model.pt"
    cfg = tiny_config(tmp_path, "model=cnn", f"data.classes={SUBSET}", f"model.init_from={source}",
                      "model.freeze=backbone", "trainer.max_epochs=3")
    train(cfg)
    tuned, bundle = load_trained(cfg.paths.models)
    before = torch.load(source, weights_only=True)["state_dict"]
    after = tuned.state_dict()
    assert bundle["classes"] == ["pluck", "bell", "organ"]
    for key, value in _backbone(before).items():  # weights and batch-norm statistics unchanged
        torch.testing.assert_close(after[key], value, msg=f"{key} changed although frozen")
    assert after["head.fc.weight"].shape == (3, before["head.fc.weight"].shape[1])
    torch.manual_seed(cfg.seed)
    fresh_head = build_model(cfg.model, 3, cfg.features.n_bins).state_dict()["head.fc.weight"]
    assert not torch.allclose(after["head.fc.weight"], fresh_head), "the head did not train"


def test_init_from_an_mlflow_run_reports_loaded_skipped_and_new(pretrained, tmp_path):
    pre_cfg, summary = pretrained
    import mlflow

    mlflow.set_tracking_uri(pre_cfg.tracking.uri)
    state = load_state(f"runs:/{summary['run_id']}/model")
    model = build_model(tiny_config(tmp_path, "model=cnn").model, n_classes=3, n_bins=84)
    report = load_matching(model, state)
    assert set(report.skipped) == {"head.fc.weight", "head.fc.bias"}  # 8 classes there, 3 here
    assert set(report.new) == {"head.fc.weight", "head.fc.bias"}
    assert report.loaded and all(not k.startswith("head.") for k in report.loaded)
    torch.testing.assert_close(model.state_dict()["backbone.1.0.weight"], state["backbone.1.0.weight"])
    assert "skipped 2" in report.describe()


def test_init_from_a_registered_model_version(pretrained):
    pre_cfg, summary = pretrained
    import mlflow

    mlflow.set_tracking_uri(pre_cfg.tracking.uri)
    version = mlflow.register_model(f"runs:/{summary['run_id']}/model", "audiocnn-transfer-test")
    state = load_state(f"models:/audiocnn-transfer-test/{version.version}")
    pretrained_state = torch.load(f"{pre_cfg.paths.models}/model.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(state["head.fc.weight"], pretrained_state["head.fc.weight"])


def test_lightning_checkpoint_loads_too(pretrained):
    pre_cfg, _ = pretrained
    state = load_state(f"{pre_cfg.paths.models}/best.ckpt")
    assert "backbone.1.0.weight" in state and not any(k.startswith("model.") for k in state)


def test_fine_tuning_uses_a_lower_backbone_learning_rate(tmp_path):
    cfg = tiny_config(tmp_path, "model=cnn", "optimizer.lr=0.01", "optimizer.backbone_lr_scale=0.1")
    model = build_model(cfg.model, 3, cfg.features.n_bins)
    freeze(model, "none")
    optimizer = Classifier(model, optimizer_settings(OmegaConf.to_container(cfg.optimizer)), 3).configure_optimizers()
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == pytest.approx([0.001, 0.01])
    freeze(model, "backbone")
    groups = parameter_groups(model, 0.01, 0.1)
    assert len(groups) == 1 and all(p.requires_grad for p in groups[0]["params"])
    # the one group is exactly the head (not an empty list, which would pass the line above)
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.head.parameters()]


def test_freezing_the_backbone_leaves_exactly_the_head_trainable_and_training(tmp_path):
    """`freeze(model, "backbone")`: every `model.head` parameter (at least one) requires grad, every other
    parameter does not; one real optimizer step then moves the head and leaves the backbone as it was."""
    cfg = tiny_config(tmp_path, "model=cnn", "optimizer.lr=0.01")
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, cfg.features.n_bins)
    freeze(model, "backbone")

    head = {id(p) for p in model.head.parameters()}
    assert head, "the model has no head parameters"
    assert all(p.requires_grad for p in model.head.parameters()), "freeze=backbone froze the head"
    others = [name for name, p in model.named_parameters() if id(p) not in head]
    assert others, "the model has no backbone parameters"
    still_trainable = [name for name, p in model.named_parameters() if id(p) not in head and p.requires_grad]
    assert still_trainable == [], f"not frozen: {still_trainable}"

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, optimizer_settings(OmegaConf.to_container(cfg.optimizer)))
    x = torch.randn(4, 1, cfg.features.n_bins, cfg.features.window_frames)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    head_names = [name for name, p in after.items() if id(p) in head]
    assert all(not torch.equal(after[name], before[name]) for name in head_names), "the head did not move"
    for name in others:
        assert torch.equal(after[name], before[name]), f"{name} changed although frozen"


def test_bad_transfer_settings_fail_before_work(tmp_path):
    from audiocnn.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match="model.freeze=everything"):
        validate_config(tiny_config(tmp_path, "model.freeze=everything"))
    with pytest.raises(ConfigError, match="model.init_from=/nope/model.pt: no such file"):
        validate_config(tiny_config(tmp_path, "model.init_from=/nope/model.pt"))


def test_report_is_json_serialisable():
    assert json.loads(json.dumps(vars(TransferReport(loaded=["a"], skipped=["b"], new=["c"]))))["new"] == ["c"]
