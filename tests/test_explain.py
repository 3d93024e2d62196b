"""Explainability: Grad-CAM maps, saliency profiles, filters, the evaluate stage's reports, `audiocnn explain`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from audiocnn.cli import main
from audiocnn.evaluation.explain import bin_frequencies, first_conv_filters, grad_cam, saliency_profile
from audiocnn.models import build_model
from audiocnn.data.prepare import read_classes
from audiocnn.models.bundle import save_bundle
from tests.conftest import tiny_config

PNG = b"\x89PNG\r\n\x1a\n"


def _tones(n_bins: int, frames: int) -> torch.Tensor:
    """Two spectrograms with bright horizontal lines (partials) over a floor: `(2, 1, n_bins, frames)`."""
    x = torch.full((2, 1, n_bins, frames), math.log(1e-4))
    x[0, 0, [20, 32, 39], :] = 0.0
    x[1, 0, [30, 42], frames // 2:] = 0.0
    return x


@pytest.mark.parametrize("model_name", ["cnn", "crnn_gru", "resnet"])
def test_grad_cam_has_the_spectrograms_shape_and_is_not_constant(tmp_path, model_name):
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, f"model={model_name}")
    model = build_model(cfg.model, 4, cfg.features.n_bins).eval()
    x = _tones(cfg.features.n_bins, cfg.features.window_frames)
    maps, logits = grad_cam(model, x)
    assert maps.shape == (2, cfg.features.n_bins, cfg.features.window_frames)
    assert logits.shape == (2, 4)
    for heatmap in maps:
        assert heatmap.max() == pytest.approx(1.0) and heatmap.min() >= 0 and heatmap.std() > 0.01
    assert not any(p.grad is not None for p in model.parameters())  # no gradient left on the weights


def _tonal_vs_transient_cnn() -> torch.nn.Module:
    """A one-block CNN with set weights: channel 0 detects horizontal lines (a held partial), channel 1
    vertical lines (a transient); logit c is the mean of channel c minus that of the other channel
    (evidence against a class, whose Grad-CAM weight is negative). Both kernels sum to zero (a flat
    floor gives 0) and the block's batch norm, otherwise the identity in eval mode, subtracts 20 so that
    the weak answers at a pattern's ends (9.2 for a line 9.2 above the floor, against 55 along it) vanish."""
    from audiocnn.models.cnn import CNN

    model = CNN(n_classes=2, n_bins=32, blocks=[{"channels": 2, "kernel": 3, "padding": 1, "pool": "none"}],
                global_pool="avg", dropout=0.0).eval()
    conv, norm, linear = model.backbone[1][0], model.backbone[1][1], model.get_classifier()
    row = torch.tensor([[-1.0, -1.0, -1.0], [2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])  # (frequency, time)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([row, row.T])[:, None])
        norm.bias.fill_(-20.0)
        linear.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        linear.bias.zero_()
    return model


def test_grad_cam_follows_the_class_asked_for():
    """On one spectrogram holding a held partial in the low bins (what class 0 responds to) and a
    transient in the high bins (class 1), Grad-CAM for class 0 lies in the low bins and for class 1
    in the high bins; without `classes` it explains the predicted class."""
    model = _tonal_vs_transient_cnn()
    floor = math.log(1e-4)
    x = torch.full((1, 1, 32, 32), floor)
    x[0, 0, 6, 4:28] = 0.0    # partial at bin 6, frames 4-27
    x[0, 0, 20:30, 20] = 0.0  # transient at frame 20, bins 20-29
    low, high = slice(0, 16), slice(16, 32)

    maps, logits = grad_cam(model, x.repeat(2, 1, 1, 1), torch.tensor([0, 1]))
    tonal, transient = maps
    assert tonal[low].sum() / tonal.sum() > 0.95, "class 0's map is not on the partial (low bins)"
    assert transient[high].sum() / transient.sum() > 0.95, "class 1's map is not on the transient (high bins)"
    assert tonal[6, 4:28].min() > 0.4 and tonal[20:30, 20].max() < 0.2
    assert transient[20:30, 20].min() > 0.4 and transient[6, 4:28].max() < 0.2

    only_transient = x.clone()
    only_transient[0, 0, 6] = floor
    maps, logits = grad_cam(model, only_transient)
    assert logits.argmax(dim=1).tolist() == [1]
    assert maps[0][high].sum() / maps[0].sum() > 0.95


def test_saliency_profile_and_filters(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, "model=cnn")
    model = build_model(cfg.model, 3, cfg.features.n_bins)
    profile = saliency_profile(model, _tones(cfg.features.n_bins, 32), torch.tensor([0, 1]))
    assert profile.shape == (cfg.features.n_bins,) and torch.all(profile >= 0) and profile.std() > 0
    filters = first_conv_filters(model)
    assert filters.shape == (cfg.model.blocks[0].channels, 3, 3)
    hz = bin_frequencies({"fmin": 32.7, "n_bins": 84, "bins_per_octave": 12})
    assert hz[0] == pytest.approx(32.7) and hz[12] == pytest.approx(65.4) and len(hz) == 84


def test_explain_cli_writes_a_grad_cam_png(tmp_path, capsys, prepared_store):
    cfg = tiny_config(tmp_path, "model=crnn_gru")
    classes = read_classes(prepared_store.paths.prepared)[0]
    model = build_model(cfg.model, len(classes), cfg.features.n_bins)
    save_bundle(model.eval(), OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features), classes,
                tmp_path / "model" / "model.pt")
    audio = tmp_path / "tone.wav"
    t = np.arange(16000 * 2) / 16000
    sf.write(audio, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    assert main(["explain", str(audio), "--model", str(tmp_path / "model")]) == 0
    png = tmp_path / "tone_gradcam.png"
    assert png.read_bytes()[:8] == PNG
    assert "predicted" in capsys.readouterr().out
    assert main(["explain", str(tmp_path / "missing.wav"), "--model", str(tmp_path / "model")]) == 2
    assert "no such audio file" in capsys.readouterr().err


def test_evaluate_writes_every_report_and_explains(tmp_path, prepared_store):
    """Train two epochs with augmentation and a schedule, then evaluate: the whole report set."""
    from audiocnn.evaluation.evaluate import evaluate
    from audiocnn.experiment import evaluate_job, job_of
    from tests.conftest import train

    cfg = tiny_config(tmp_path, "augment=combo", "scheduler=cosine",
                      "trainer.class_weights=balanced", "trainer.label_smoothing=0.1",
                      "trainer.gradient_clip_val=1.0", "evaluate.bootstrap_resamples=200")
    for key in ("raw", "prepared", "features"):  # read the shared tiny store, write models/metrics here
        cfg.paths[key] = prepared_store.paths[key]
    train(cfg)
    metrics = evaluate(evaluate_job(job_of(cfg)))
    out = tmp_path / "metrics"
    saved = json.loads((out / "test.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "top_k_accuracy", "ece", "accuracy_ci95", "worst_class"):
        assert key in saved
    per_class = json.loads((out / "per_class.json").read_text())
    assert set(per_class) == {"per_class_precision", "per_class_recall", "per_class_f1"}
    assert set(saved["top_k_accuracy"]) == {"top_1", "top_3"}
    assert saved["accuracy_ci95"]["low"] <= metrics["accuracy"] <= saved["accuracy_ci95"]["high"]
    for png in ("confusion_matrix.png", "reliability_diagram.png", "explain/gradcam.png", "explain/saliency.png",
                "explain/filters.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
