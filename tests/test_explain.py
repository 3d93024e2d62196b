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
from audiocnn.training.datamodule import load_classes
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
    classes = load_classes(prepared_store)
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
    from tests.conftest import train

    cfg = tiny_config(tmp_path, "augment=combo", "scheduler=cosine",
                      "trainer.class_weights=balanced", "trainer.label_smoothing=0.1",
                      "trainer.gradient_clip_val=1.0", "evaluate.bootstrap_resamples=200")
    for key in ("raw", "prepared", "features"):  # read the shared tiny store, write models/metrics here
        cfg.paths[key] = prepared_store.paths[key]
    train(cfg)
    metrics = evaluate(cfg)
    out = tmp_path / "metrics"
    saved = json.loads((out / "test.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "top_k_accuracy", "ece", "accuracy_ci95",
                "per_class_precision", "per_class_recall", "per_class_f1"):
        assert key in saved
    assert set(saved["top_k_accuracy"]) == {"top_1", "top_3"}
    assert saved["accuracy_ci95"]["low"] <= metrics["accuracy"] <= saved["accuracy_ci95"]["high"]
    for png in ("confusion_matrix.png", "reliability_diagram.png", "explain/gradcam.png", "explain/saliency.png",
                "explain/filters.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
