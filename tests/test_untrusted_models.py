"""A model file is data, never code: hostile `model.pt` bundles are refused by every loader.

Each hostile bundle is made only of dicts, strings and tensors, so it passes
`torch.load(weights_only=True)`; an `instantiate`-based loader would run its `_target_`s
(here `os.makedirs(<marker>)`). Every entry point that loads a model must refuse it with
one line naming the offending key, and the marker folder must never appear.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from audiocnn.cli import main
from audiocnn.errors import BundleError, InputError
from audiocnn.models import build_model
from audiocnn.features.cqt import FRONTEND_VERSION
from audiocnn.models.bundle import BUNDLE_FORMAT, build_from_bundle, load_bundle, save_bundle
from tests.conftest import tiny_config, train

FEATURES = {"sr": 16000, "hop_length": 512, "fmin": 32.7, "n_bins": 84, "bins_per_octave": 12, "amin": 1e-4,
            "window_frames": 128}


def hostile_bundles(marker: Path) -> dict[str, tuple[dict, str]]:
    """name -> (bundle, what the refusal must name)."""
    chain = {"_target_": "os.makedirs", "name": str(marker), "exist_ok": True}
    base = {"format": BUNDLE_FORMAT, "frontend_version": FRONTEND_VERSION, "state_dict": {"w": torch.zeros(1)},
            "features": FEATURES, "classes": ["a", "b"]}
    return {
        "target is os.makedirs": ({**base, "model": chain}, "model._target_=os.makedirs: not an audiocnn model"),
        "no format (old loader's attack)": ({k: v for k, v in base.items() if k != "format"} | {"model": chain},
                                            "format="),
        "nested target in the blocks": ({**base, "model": {"_target_": "audiocnn.models.cnn.CNN", "name": "cnn",
                                                          "blocks": [chain]}}, "model.blocks[0]._target_"),
        "nested target in an argument": ({**base, "model": {"_target_": "audiocnn.models.crnn.CRNN", "rnn": chain,
                                                           "blocks": [{"channels": 4}]}}, "model.rnn._target_"),
        "unknown argument": ({**base, "model": {"_target_": "audiocnn.models.cnn.CNN", "blocks": [{"channels": 4}],
                                                "_recursive_": True}}, "model._recursive_"),
        "target in features": ({**base, "model": {"_target_": "audiocnn.models.cnn.CNN", "blocks": [{"channels": 4}]},
                                "features": {**FEATURES, "sr": chain}}, "features.sr._target_"),
        "a state dict of strings": ({**base, "state_dict": {"w": "os.system"},
                                     "model": {"_target_": "audiocnn.models.cnn.CNN"}}, "state_dict"),
    }


def write_bundle(bundle: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(bundle, folder / "model.pt")
    torch.load(folder / "model.pt", weights_only=True)  # what makes it dangerous: it passes the safe unpickler
    return folder


@pytest.mark.parametrize("name", list(hostile_bundles(Path("x"))))
def test_every_hostile_bundle_is_refused_naming_its_key(tmp_path, name):
    marker = tmp_path / "pwned"
    bundle, key = hostile_bundles(marker)[name]
    with pytest.raises(BundleError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_bundle(write_bundle(bundle, tmp_path / "model"))
    assert not marker.exists()


def test_explain_refuses_a_hostile_model_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = write_bundle(hostile_bundles(marker)["target is os.makedirs"][0], tmp_path / "model")
    audio = tmp_path / "tone.wav"
    sf.write(audio, (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32), 16000)
    assert main(["explain", str(audio), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an audiocnn model" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "tone_gradcam.png").exists()


def test_ensemble_refuses_a_hostile_member(prepared_store, tmp_path):
    from audiocnn.experiment import evaluate_model, job_of

    marker = tmp_path / "pwned"
    folder = write_bundle(hostile_bundles(marker)["nested target in the blocks"][0], tmp_path / "member")
    root = Path(prepared_store.paths.raw).parent
    cfg = tiny_config(root, f"ensemble=[{folder}]", f"paths.metrics={tmp_path / 'metrics'}")
    with pytest.raises(BundleError, match=r"model.blocks\[0\]._target_"):
        evaluate_model(job_of(cfg))
    assert not marker.exists()


def test_init_from_reads_only_tensors_and_zero_matching_tensors_is_an_error(prepared_store, tmp_path):
    marker = tmp_path / "pwned"
    hostile = write_bundle(hostile_bundles(marker)["target is os.makedirs"][0], tmp_path / "hostile")
    root = Path(prepared_store.paths.raw).parent
    cfg = tiny_config(root, "model=cnn", f"model.init_from={hostile / 'model.pt'}",
                      f"paths.models={tmp_path / 'models'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(InputError, match="model.init_from=.*none of its 1 tensors fits"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "models" / "model.pt").exists()
    strings = write_bundle(hostile_bundles(marker)["a state dict of strings"][0], tmp_path / "strings")
    cfg.model.init_from = str(strings / "model.pt")
    with pytest.raises(BundleError, match="state_dict: must map parameter names to tensors"):
        train(cfg)


def test_the_mlflow_pyfunc_refuses_a_hostile_model_pt(tmp_path):
    from audiocnn.inference.pyfunc import log_audio_model

    marker = tmp_path / "pwned"
    hostile = write_bundle(hostile_bundles(marker)["target is os.makedirs"][0], tmp_path / "hostile")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("untrusted-models")
    with mlflow.start_run():
        uri = log_audio_model(hostile / "model.pt").model_uri
    with pytest.raises(Exception, match="not an audiocnn model") as error:
        mlflow.pyfunc.load_model(uri)
    assert "os.makedirs" in str(error.value) and not marker.exists()


def test_a_real_bundle_round_trips_and_a_foreign_target_is_refused_before_training(tmp_path):
    from audiocnn.config import compose_config, validate_config
    from audiocnn.errors import ConfigError

    cfg = compose_config(["model=crnn_gru"])
    model = build_model(cfg.model, 3, cfg.features.n_bins).eval()
    path = save_bundle(model, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features),
                       ["a", "b", "c"], tmp_path / "model.pt")
    rebuilt = build_from_bundle(torch.load(path, weights_only=True))
    x = torch.randn(2, 1, cfg.features.n_bins, cfg.features.window_frames)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    with pytest.raises(ConfigError, match="model._target_=os.system: not an audiocnn model"):
        validate_config(compose_config(["model._target_=os.system"]))
