"""`audiocnn export`: ONNX and TorchScript files with the CQT inside give PyTorch's probabilities."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from audiocnn import load_model
from audiocnn.cli import main
from audiocnn.config import compose_config
from audiocnn.models import build_model
from audiocnn.models.bundle import save_bundle
from tests.conftest import REPO, tiny_config, train

FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"


def bundle_for(tmp_path: Path, model: str, *overrides: str) -> Path:
    """An untrained (randomly initialised, seeded) model saved as a train-stage bundle."""
    import torch

    torch.manual_seed(0)
    cfg = compose_config([f"model={model}", *overrides])
    net = build_model(cfg.model, 4, cfg.features.n_bins, cfg.features.get("top_db")).eval()
    folder = tmp_path / model
    save_bundle(net, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features),
                ["a", "b", "c", "d"], folder / "model.pt")
    return folder


def clips(prepared_store, tmp_path: Path, sr: int) -> list[Path]:
    """Real demo clips at several lengths: whole, cut shorter than a window, and three joined."""
    paths = pd.read_csv(Path(prepared_store.paths.prepared) / "manifest.csv")["path"].tolist()[:3]
    waves = [sf.read(p, dtype="float32")[0] for p in paths]
    extra = {"short.wav": waves[0][: sr // 2], "joined.wav": np.concatenate(waves), "odd.wav": waves[1][:48_123]}
    for name, wave in extra.items():
        sf.write(tmp_path / name, wave, sr)
    return [Path(p) for p in paths] + [tmp_path / name for name in extra]


def assert_exports_match(folder: Path, inputs: list[Path], tmp_path: Path) -> None:
    eager = load_model(folder).predict(inputs, timeline=True)
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
        out = tmp_path / f"{folder.name}{suffix}"
        assert main(["export", "--model", str(folder), "--format", fmt, "--output", str(out)]) == 0
        exported = load_model(out, trust_code=True).predict(inputs, timeline=True)  # our own export
        for a, b in zip(eager, exported):
            assert "error" not in b, b
            np.testing.assert_allclose(list(b["probabilities"].values()), list(a["probabilities"].values()), atol=1e-4)
            assert [w["start_s"] for w in b["timeline"]] == [w["start_s"] for w in a["timeline"]]
        assert load_model(out, trust_code=True).classes == load_model(folder).classes


@pytest.mark.parametrize("model", ["cnn", "crnn_gru", "crnn_lstm", "resnet", "lenet", "alexnet"])
def test_onnx_and_torchscript_match_pytorch_on_demo_clips(model, prepared_store, tmp_path):
    folder = bundle_for(tmp_path, model, "features.top_db=60")
    assert_exports_match(folder, clips(prepared_store, tmp_path, prepared_store.features.sr), tmp_path)


@pytest.mark.parametrize("freq_pool", ["max", "attention", "max_centroid"])
def test_each_crnn_freq_pool_exports_and_matches_pytorch(freq_pool, prepared_store, tmp_path):
    folder = bundle_for(tmp_path, "crnn_gru", "features.top_db=60", f"model.freq_pool={freq_pool}")
    assert_exports_match(folder, clips(prepared_store, tmp_path, prepared_store.features.sr)[:4], tmp_path)


@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD}")
def test_exports_match_on_fsdd_clips_with_the_speech_front_end(tmp_path):
    folder = bundle_for(tmp_path, "crnn_gru", "data=fsdd")
    inputs = sorted(FSDD.glob("*_theo_*.wav"))[:4] + sorted(FSDD.glob("*_george_4*.wav"))[:2]
    assert_exports_match(folder, inputs, tmp_path)


@pytest.mark.slow
def test_an_on_the_fly_model_with_trained_kernels_exports_and_explains(prepared_store, tmp_path, capsys):
    cfg = tiny_config(tmp_path, "model=cnn", "features.on_the_fly=true", "features.trainable=true",
                      "trainer.max_epochs=1", "tracking.export_onnx=false")
    train(cfg)
    inputs = clips(prepared_store, tmp_path, cfg.features.sr)
    folder = Path(cfg.paths.models)
    folder = folder.rename(folder.with_name("on_the_fly"))
    assert_exports_match(folder, inputs, tmp_path)
    assert main(["explain", str(inputs[0]), "--model", str(folder), "--output", str(tmp_path / "cam.png")]) == 0
    assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG" and "predicted" in capsys.readouterr().out


def test_predict_with_an_onnx_file_needs_no_pytorch(prepared_store, tmp_path):
    """The onnxruntime path decodes and runs the graph; torch is never imported."""
    folder = bundle_for(tmp_path, "cnn")
    out = tmp_path / "cnn.onnx"
    assert main(["export", "--model", str(folder), "--format", "onnx", "--output", str(out)]) == 0
    clip = clips(prepared_store, tmp_path, prepared_store.features.sr)[0]
    code = ("import sys; from audiocnn.cli import main; status = main(['predict', sys.argv[1], '--model', sys.argv[2]]);"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, str(clip), str(out)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert Path(clip).name in result.stdout
