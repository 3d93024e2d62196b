"""`model.norm` travels with a trained model: the bundle (`model.pt`), the ONNX and TorchScript exports
and the pyfunc serving give the same probabilities, and a bin_norm bundle holds the TRAIN split's
per-bin statistics (numpy over the train clips' stored frames, not the validation or test clips')."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from audiocnn.settings import store_settings
from audiocnn import load_model
from audiocnn.inference.pyfunc import AudioClassifier
from audiocnn.models.bundle import load_bundle
from audiocnn.models.norm import PCEN, BinNorm
from tests.conftest import tiny_config, train
from tests.test_export import assert_exports_match, clips
from tests.test_norm import train_frames


def trained(prepared_store, tmp_path: Path, *overrides: str) -> Path:
    """A tiny model trained (2 epochs) on the shared demo store; returns its model folder."""
    cfg = tiny_config(tmp_path, *overrides)
    for key in ("raw", "prepared", "features"):  # the session's prepared clips and store
        OmegaConf.update(cfg, f"paths.{key}", prepared_store.paths[key])
    train(cfg)
    return Path(cfg.paths.models)


def served(folder: Path, inputs: list[Path]) -> list[list[float]]:
    """Probabilities from the MLflow pyfunc (`mlflow models serve` runs this class) around `model.pt`."""
    model = AudioClassifier()
    model.load_context(SimpleNamespace(artifacts={"model.pt": str(folder / "model.pt")}, model_config={}))
    answers = []
    for path in inputs:
        wave, rate = sf.read(path, dtype="float32")
        answers.append(list(model.predict(None, {"samples": [wave.tolist()], "sample_rate": [rate]})[0]
                            ["probabilities"].values()))
    return answers


def assert_travels(folder: Path, prepared_store, tmp_path: Path) -> None:
    inputs = clips(prepared_store, tmp_path, prepared_store.features.sr)
    assert_exports_match(folder, inputs, tmp_path)  # bundle == ONNX == TorchScript, within 1e-4
    bundle = [list(r["probabilities"].values()) for r in load_model(folder).predict(inputs)]
    np.testing.assert_allclose(served(folder, inputs), bundle, atol=1e-6)


def test_a_bin_norm_model_keeps_the_train_splits_statistics_in_its_bundle_export_and_serving(
        prepared_store, tmp_path, capsys):
    folder = trained(prepared_store, tmp_path, "model=cnn", "norm=bin_norm")
    assert "per-bin mean and std of" in capsys.readouterr().out
    model, bundle = load_bundle(folder)
    assert bundle["model"]["norm"] == {"type": "bin_norm", "min_std": 0.1}
    layer = model.input_norm
    assert isinstance(layer, BinNorm)
    frames = train_frames(prepared_store).astype(np.float64)
    np.testing.assert_allclose(layer.mean.numpy(), frames.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.std.numpy(), frames.std(axis=0), rtol=1e-5, atol=1e-5)
    everything = np.concatenate([frames, _other_frames(prepared_store)])  # with validation and test clips
    assert np.abs(layer.mean.numpy() - everything.mean(axis=0)).max() > 1e-3
    assert_travels(folder, prepared_store, tmp_path)
    # the normalisation is inside the exported graph: zeroing the bundle's statistics changes its answers
    state = torch.load(folder / "model.pt", weights_only=True)
    state["state_dict"]["input_norm.mean"].zero_()
    torch.save(state, tmp_path / "zeroed.pt")
    inputs = clips(prepared_store, tmp_path, prepared_store.features.sr)[:2]
    changed = load_model(tmp_path / "zeroed.pt").predict(inputs)
    original = load_model(folder).predict(inputs)
    assert any(np.abs(np.subtract(list(a["probabilities"].values()), list(b["probabilities"].values()))).max() > 1e-3
               for a, b in zip(changed, original))


def _other_frames(cfg) -> np.ndarray:
    """The frames of the clips outside the train split."""
    import pandas as pd

    from audiocnn.features.featurize import store_dir

    root = store_dir(store_settings(cfg))
    index = pd.read_csv(root / "index.csv")
    manifest = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv")
    rest = index[manifest["split"].to_numpy()[index["clip_id"].to_numpy()] != "train"]
    frames = []
    for r in rest.itertuples():
        shard = np.fromfile(root / f"{r.shard}.f16", dtype=np.float16).reshape(-1, cfg.features.n_bins)
        frames.append(shard[r.start: r.start + r.length])
    return np.concatenate(frames).astype(np.float64)


@pytest.mark.parametrize("model", ["crnn_gru"])
def test_a_trained_pcen_model_travels_with_its_learned_parameters(model, prepared_store, tmp_path):
    folder = trained(prepared_store, tmp_path, f"model={model}", "norm=pcen", "model.norm.trainable=true")
    loaded, bundle = load_bundle(folder)
    assert isinstance(loaded.input_norm, PCEN) and bundle["model"]["norm"]["trainable"] is True
    learned = bundle["state_dict"]["input_norm.log_alpha"]
    assert learned.shape == (prepared_store.features.n_bins,)
    assert not torch.allclose(learned, torch.full_like(learned, float(np.log(0.98))))  # trained away from init
    torch.testing.assert_close(loaded.input_norm.log_alpha.detach(), learned)
    assert_travels(folder, prepared_store, tmp_path)
