"""The CUDA paths on a GPU: the CQT, the featurize stage, predict, bf16 precision.

Skipped where torch sees no CUDA GPU (CI has none); `benchmarks/gpu_check.sh` runs them on a
lent GPU. Each compares the GPU's answer with the CPU's on the same input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")

SPEECH = dict(sr=8000, hop_length=128, fmin=32.7, n_bins=84, bins_per_octave=12, amin=1e-4)


def test_the_cqt_on_cuda_gives_the_cpu_frames_alone_and_batched():
    from audiocnn.features.cqt import LogCQT

    torch.manual_seed(0)
    waves = torch.randn(3, 8000) * torch.linspace(0, 1, 8000)  # (batch, samples), a ramp: not all loud
    cqt = LogCQT(**SPEECH)
    on_cpu = cqt(waves)  # (3, 84, frames)
    on_gpu = cqt.cuda()(waves.cuda()).cpu()
    assert on_gpu.shape == on_cpu.shape
    assert torch.allclose(on_gpu, on_cpu, atol=2e-3), (on_gpu - on_cpu).abs().max()
    alone = cqt(waves[1:2].cuda()).cpu()
    assert torch.allclose(alone, on_gpu[1:2], atol=1e-4)


def test_trainable_kernels_get_gradients_on_cuda():
    from audiocnn.features.cqt import LogCQT

    cqt = LogCQT(**SPEECH, trainable=True).cuda()
    cqt(torch.randn(2, 4000, device="cuda")).mean().backward()
    grads = [p.grad for p in cqt.parameters()]
    assert grads and all(g is not None and g.is_cuda and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_bf16_mixed_is_kept_on_a_gpu_with_bf16():
    from audiocnn.training.optim import resolve_precision

    assert torch.cuda.is_bf16_supported()
    assert resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"


def test_predict_on_cuda_gives_the_cpu_probabilities(tmp_path):
    from audiocnn import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from predict import untrained_bundle

    folder = untrained_bundle(tmp_path / "model")
    rng = np.random.default_rng(0)
    clips = []
    for index, seconds in enumerate((1.0, 2.5, 3.7)):  # one window, several
        path = tmp_path / f"clip{index}.wav"
        sf.write(path, (0.3 * rng.standard_normal(int(8000 * seconds))).astype(np.float32), 8000)
        clips.append(str(path))
    on_cpu = load_model(folder, device="cpu").predict(clips)
    on_gpu = load_model(folder, device="cuda").predict(clips)
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert cpu["label"] == gpu["label"]
        assert "error" not in gpu, gpu
        assert np.allclose(list(cpu["probabilities"].values()), list(gpu["probabilities"].values()), atol=1e-3)
