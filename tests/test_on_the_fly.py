"""On-the-fly mode: the CQT inside the model (`Classifier.frontend`) instead of the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from audiocnn.features.cqt import CQTFrontend
from audiocnn.features.featurize import featurize
from audiocnn.models import build_model
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.module import Classifier
from tests.conftest import tiny_config

WINDOW, HOP, SR = 32, 512, 16000


def _window_clips(root: Path) -> None:
    """Clips exactly one window long: (WINDOW - 1) * HOP samples give WINDOW frames."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        t = np.arange((WINDOW - 1) * HOP) / SR
        wave = 0.4 * np.sin(2 * np.pi * 220 * (i + 1) * t) + 0.05 * rng.standard_normal(len(t))
        path = root / f"clip{i}.wav"
        sf.write(path, wave.astype(np.float32), SR, subtype="FLOAT")
        rows.append({"path": str(path), "label": ["a", "b"][i % 2], "split": "test", "fold": "", "group": str(i),
                     "duration": len(t) / SR, "sr": SR})
    (root / "prepared").mkdir()
    pd.DataFrame(rows).to_csv(root / "prepared" / "manifest.csv", index=False)
    (root / "prepared" / "classes.json").write_text(json.dumps(["a", "b"]))


def test_store_and_on_the_fly_give_the_same_logits_for_the_same_weights_and_clips(tmp_path):
    _window_clips(tmp_path)
    stored_cfg = tiny_config(tmp_path, "model=cnn", f"features.window_frames={WINDOW}", "features.device=cpu")
    featurize(stored_cfg)
    fly_cfg = tiny_config(tmp_path, "model=cnn", f"features.window_frames={WINDOW}", "features.on_the_fly=true")
    stored, fly = WindowDataModule(stored_cfg), WindowDataModule(fly_cfg)
    frames, labels = next(iter(stored._loader(stored.dataset("test", "center"), shuffle=False)))
    waves, fly_labels = next(iter(fly._loader(fly.dataset("test", "center"), shuffle=False)))
    assert frames.shape == (6, 1, 84, WINDOW) and waves.shape == (6, (WINDOW - 1) * HOP)
    assert labels.tolist() == fly_labels.tolist()

    torch.manual_seed(0)
    model = build_model(stored_cfg.model, 2, 84).eval()
    from_store = Classifier(model, stored_cfg.optimizer, 2).eval()
    on_the_fly = Classifier(model, fly_cfg.optimizer, 2, frontend=CQTFrontend.from_config(fly_cfg.features)).eval()
    assert isinstance(from_store.frontend, torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(on_the_fly.frontend(waves), frames, atol=1e-2, rtol=2e-3)  # float16 store
        torch.testing.assert_close(on_the_fly(waves), from_store(frames), atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_train_and_evaluate_on_the_fly_with_trainable_kernels(tmp_path):
    from audiocnn.evaluation.evaluate import evaluate
    from audiocnn.models.bundle import load_bundle as load_trained
    from tests.conftest import train

    cfg = tiny_config(tmp_path, "model=cnn", "features.on_the_fly=true", "features.trainable=true",
                      "trainer.max_epochs=1", "tracking.log_model=true")
    summary = train(cfg)
    assert not (tmp_path / "features").exists()  # no store
    model, bundle = load_trained(cfg.paths.models)
    assert isinstance(model, torch.nn.Sequential) and isinstance(model[0], CQTFrontend)
    initial = CQTFrontend.from_config(cfg.features).state_dict()
    trained = bundle["frontend"]
    assert not torch.equal(trained["cqt.cqt.cqt_kernels_real"], initial["cqt.cqt.cqt_kernels_real"])  # kernels learned
    with torch.no_grad():
        logits = model(torch.zeros(2, (cfg.features.window_frames - 1) * cfg.features.hop_length))
    assert logits.shape == (2, len(bundle["classes"]))
    metrics = evaluate(cfg)
    assert metrics["n_clips"] == len(pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv").query("split == 'test'"))
    assert summary["epochs"] >= 1

    # The logged pyfunc serves raw audio through the trained kernels, not a fresh CQT.
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    served = mlflow.pyfunc.load_model(summary["registered_model"])
    served_cqt = served.unwrap_python_model().predictor.cqt  # the trained kernels, not a fresh CQT
    assert torch.equal(served_cqt.cqt.cqt_kernels_real, trained["cqt.cqt.cqt_kernels_real"])
    clip = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv")["path"].iloc[0]
    samples, sr = sf.read(clip, dtype="float32")
    answer = served.predict({"samples": [samples.tolist()], "sample_rate": [sr]})[0]
    assert list(answer["probabilities"]) == bundle["classes"]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_an_on_the_fly_bundle_with_another_front_ends_kernels_is_refused_naming_retrain(tmp_path):
    """A model trained on the fly before the multirate CQT (FRONTEND_VERSION 4) stored kernels of other
    shapes: one line saying to retrain, not torch's size-mismatch report."""
    from omegaconf import OmegaConf

    from audiocnn.errors import BundleError
    from audiocnn.models import build_model
    from audiocnn.models.bundle import load_bundle, save_bundle

    cfg = tiny_config(tmp_path, "model=cnn", "features.on_the_fly=true")
    features = OmegaConf.to_container(cfg.features, resolve=True)
    model = build_model(cfg.model, 2, cfg.features.n_bins, cfg.features.get("top_db")).eval()
    path = save_bundle(model, OmegaConf.to_container(cfg.model, resolve=True), features, ["a", "b"],
                       tmp_path / "m" / "model.pt", frontend=CQTFrontend.from_config(cfg.features))
    assert load_bundle(path)[1]["features"]["on_the_fly"]  # the bundle as written loads
    bundle = torch.load(path, weights_only=True)
    key = next(iter(bundle["frontend"]))
    bundle["frontend"][key] = bundle["frontend"][key].flatten()[:-1].clone()  # an older front-end's shape
    torch.save(bundle, path)
    with pytest.raises(BundleError, match=r"frontend: its CQT kernels are not those .*; retrain the model"):
        load_bundle(path)
