"""On-the-fly mode: the CQT inside the model (its `frontend`, in its state_dict) instead of the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
import soundfile as sf
import torch

from audiocnn.settings import store_settings
from audiocnn.features.cqt import CQTFrontend
from audiocnn.features.featurize import featurize
from audiocnn.models import build_frontend, build_model
from audiocnn.experiment import data_module, job_of
from audiocnn.training.module import Classifier
from audiocnn.training.optim import optimizer_settings
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
    featurize(store_settings(stored_cfg))
    fly_cfg = tiny_config(tmp_path, "model=cnn", f"features.window_frames={WINDOW}", "features.on_the_fly=true")
    stored, fly = data_module(stored_cfg), data_module(fly_cfg)
    frames, labels = next(iter(stored._loader(stored.dataset("test", "center"), shuffle=False)))
    waves, fly_labels = next(iter(fly._loader(fly.dataset("test", "center"), shuffle=False)))
    assert frames.shape == (6, 1, 84, WINDOW) and waves.shape == (6, (WINDOW - 1) * HOP)
    assert labels.tolist() == fly_labels.tolist()

    torch.manual_seed(0)
    stored_model = build_model(stored_cfg.model, 2, 84).eval()
    fly_model = build_model(fly_cfg.model, 2, 84, frontend=build_frontend(fly_cfg.features)).eval()
    fly_model.load_state_dict({**fly_model.state_dict(), **stored_model.state_dict()})  # the same weights
    assert isinstance(stored_model.frontend, torch.nn.Identity) and isinstance(fly_model.frontend, CQTFrontend)
    assert {k for k in fly_model.state_dict() if k.startswith("frontend.")} == {
        "frontend.cqt.cqt.cqt_kernels_real", "frontend.cqt.cqt.cqt_kernels_imag", "frontend.cqt.cqt.lenghts"}
    from_store = Classifier(stored_model, optimizer_settings(OmegaConf.to_container(stored_cfg.optimizer)), 2).eval()
    on_the_fly = Classifier(fly_model, optimizer_settings(OmegaConf.to_container(fly_cfg.optimizer)), 2).eval()
    with torch.no_grad():
        torch.testing.assert_close(on_the_fly.frames(waves), frames, atol=1e-2, rtol=2e-3)  # float16 store
        torch.testing.assert_close(on_the_fly(waves), from_store(frames), atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(fly_model(waves), stored_model(frames), atol=1e-3, rtol=1e-3)
    from audiocnn.models.summary import summarize  # the table of a waveform model: from its front-end's output

    assert summarize(fly_model, 84, WINDOW).total_macs == summarize(stored_model, 84, WINDOW).total_macs


@pytest.mark.slow
def test_train_and_evaluate_on_the_fly_with_trainable_kernels(tmp_path):
    from audiocnn.evaluation.evaluate import evaluate
    from audiocnn.experiment import evaluate_job
    from audiocnn.models.bundle import load_bundle as load_trained
    from tests.conftest import train

    cfg = tiny_config(tmp_path, "model=cnn", "features.on_the_fly=true", "features.trainable=true",
                      "trainer.max_epochs=1", "tracking.log_model=true")
    summary = train(cfg)
    assert not (tmp_path / "features").exists()  # no store
    model, bundle = load_trained(cfg.paths.models)
    assert isinstance(model.frontend, CQTFrontend) and "frontend" not in bundle  # in the model's state_dict
    initial = CQTFrontend.from_config(cfg.features).state_dict()
    trained = {k.removeprefix("frontend."): v for k, v in bundle["state_dict"].items() if k.startswith("frontend.")}
    assert not torch.equal(trained["cqt.cqt.cqt_kernels_real"], initial["cqt.cqt.cqt_kernels_real"])  # kernels learned
    with torch.no_grad():
        logits = model(torch.zeros(2, (cfg.features.window_frames - 1) * cfg.features.hop_length))
    assert logits.shape == (2, len(bundle["classes"]))
    metrics = evaluate(evaluate_job(job_of(cfg)))
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


def test_bundles_of_the_old_layout_or_another_front_end_version_are_refused_naming_retrain(tmp_path, capsys):
    """A model file written before the front-end moved into the model (format 2: `nn.Sequential`
    layout, kernels under `frontend`), or trained on another FRONTEND_VERSION's frames (stored or on
    the fly), is refused in one line saying to retrain: by evaluate and predict (`load_bundle`, the
    CLI) and by `model.init_from` (`load_state`)."""

    from audiocnn.cli import main
    from audiocnn.errors import BundleError
    from audiocnn.features.cqt import FRONTEND_VERSION
    from audiocnn.models.bundle import load_bundle, load_state, save_bundle

    written = {}
    for name, overrides in (("fly", ["features.on_the_fly=true"]), ("stored", [])):
        cfg = tiny_config(tmp_path, "model=cnn", *overrides)
        model = build_model(cfg.model, 2, cfg.features.n_bins, cfg.features.get("top_db"),
                            frontend=build_frontend(cfg.features)).eval()
        written[name] = save_bundle(model, OmegaConf.to_container(cfg.model, resolve=True),
                                    OmegaConf.to_container(cfg.features, resolve=True), ["a", "b"],
                                    tmp_path / name / "model.pt")
        bundle = load_bundle(written[name])[1]  # as written, it loads
        assert bundle["frontend_version"] == FRONTEND_VERSION and "frontend" not in bundle

    def rewrite(name: str, change) -> Path:
        bundle = torch.load(written[name], weights_only=True)
        change(bundle)
        path = tmp_path / f"{name}-changed" / "model.pt"
        path.parent.mkdir(exist_ok=True)
        torch.save(bundle, path)
        return path

    def sequential_layout(bundle):  # what audiocnn wrote before: the kernels apart, no version
        bundle["frontend"] = {k.removeprefix("frontend."): bundle["state_dict"].pop(k)
                              for k in list(bundle["state_dict"]) if k.startswith("frontend.")}
        bundle["format"] = 2
        del bundle["frontend_version"]

    old_layout = rewrite("fly", sequential_layout)
    old_frames = rewrite("stored", lambda bundle: bundle.update(frontend_version=FRONTEND_VERSION - 1))
    for path, message in ((old_layout, r"format=2: this audiocnn reads bundle format 3 .*; retrain the model"),
                          (old_frames, rf"frontend_version={FRONTEND_VERSION - 1}: .*featurize again and retrain")):
        for load in (load_bundle, load_state):
            with pytest.raises(BundleError, match=message):
                load(path)
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "clip.wav"), "--model", str(path)]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and "retrain" in err[0], err
