"""`model.norm` (audiocnn/models/norm.py): PCEN against librosa, the constant-gain property, per-bin
statistics of the train split, trainable PCEN, and how a bundle refuses a bad `model.norm`."""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from audiocnn.settings import store_settings
from audiocnn.config import compose_config
from audiocnn.errors import BundleError
from audiocnn.features.cqt import LogCQT
from audiocnn.features.store import FeatureStore
from audiocnn.features.featurize import store_dir
from audiocnn.models import build_model
from audiocnn.models.bundle import build_from_bundle, load_bundle, save_bundle
from audiocnn.models.norm import PCEN, BinNorm
from audiocnn.training import norm_stats
from audiocnn.training.norm_stats import BinMoments, store_moments
from audiocnn.training.optim import build_optimizer, optimizer_settings


def pcen_of(log_magnitude: np.ndarray, **settings) -> np.ndarray:
    """Our PCEN of `(n_bins, frames)` natural-log magnitudes, as numpy."""
    layer = PCEN(log_magnitude.shape[0], **settings)
    return layer(torch.from_numpy(log_magnitude).float()[None, None])[0, 0].double().numpy()


@pytest.mark.parametrize("settings", [dict(alpha=0.98, delta=2.0, r=0.5, s=0.04, eps=1e-6),
                                      dict(alpha=0.8, delta=0.5, r=0.25, s=0.3, eps=1e-3)])
def test_pcen_equals_librosa_pcen_with_the_same_parameters(settings):
    """librosa.pcen filters with scipy's lfilter([s], [1, s - 1], zi); zi = (1 - s) E[:, 0] starts the
    smoother at the first frame, as ours does."""
    rng = np.random.default_rng(0)
    magnitude = np.exp(rng.normal(0.0, 2.0, size=(7, 90)))  # (n_bins, frames), 4 decades of level
    s = settings["s"]
    expected = librosa.pcen(magnitude, b=s, gain=settings["alpha"], bias=settings["delta"], power=settings["r"],
                            eps=settings["eps"], zi=(1 - s) * magnitude[:, :1])
    np.testing.assert_allclose(pcen_of(np.log(magnitude), **settings), expected, rtol=1e-4, atol=1e-5)


def test_trainable_pcen_has_one_parameter_per_bin_each_matching_librosa():
    rng = np.random.default_rng(1)
    magnitude = np.exp(rng.normal(0.0, 1.0, size=(3, 40)))
    layer = PCEN(3, trainable=True)
    values = {"alpha": [0.6, 0.9, 0.99], "delta": [0.5, 1.0, 3.0], "r": [0.2, 0.5, 0.8], "s": [0.02, 0.1, 0.5]}
    with torch.no_grad():
        for name, per_bin in values.items():
            getattr(layer, f"log_{name}").copy_(torch.tensor(per_bin).log())
    ours = layer(torch.from_numpy(np.log(magnitude)).float()[None, None])[0, 0].detach().double().numpy()
    for f in range(3):
        b = values["s"][f]
        expected = librosa.pcen(magnitude[f], b=b, gain=values["alpha"][f], bias=values["delta"][f],
                                power=values["r"][f], eps=1e-6, zi=[(1 - b) * magnitude[f, 0]])
        np.testing.assert_allclose(ours[f], expected, rtol=1e-4, atol=1e-5)


def demo_clip(prepared_store) -> np.ndarray:
    path = pd.read_csv(Path(prepared_store.paths.prepared) / "manifest.csv")["path"].iloc[0]
    return sf.read(path, dtype="float32")[0]


def test_pcen_nearly_removes_a_constant_gain_that_shifts_every_log_cqt_cell(prepared_store):
    """The channel-removal property: a clip and the same clip 10x louder (20 dB) differ by ln(10) in every
    log-CQT cell; their PCEN differs by only ~g^(1 - alpha) - 1 = 5 % of its range. (A gain that lifts
    the signal over the magnitude floor `features.amin` changes what is floored: the CQT here has a
    floor far below the clip, so the gain is all there is.)"""
    f = prepared_store.features
    cqt = LogCQT(f.sr, f.hop_length, f.fmin, f.n_bins, f.bins_per_octave, amin=1e-12)
    wave = torch.from_numpy(demo_clip(prepared_store))[None]
    quiet, loud = cqt(wave)[:, None], cqt(wave * 10)[:, None]  # (1, 1, n_bins, frames)
    above = quiet > math.log(1e-12) + 1
    assert float(above.float().mean()) > 0.9
    assert torch.allclose((loud - quiet)[above], torch.tensor(math.log(10)), atol=1e-3)
    layer = PCEN(f.n_bins)  # conf/norm/pcen.yaml's settings (test_the_pcen_config_defaults_are_the_constructors)
    out_quiet, out_loud = layer(quiet), layer(loud)
    spread = float(out_quiet.max() - out_quiet.min())
    assert float((out_loud - out_quiet).abs().max()) < 0.06 * spread
    no_gain_control = PCEN(f.n_bins, alpha=0.01)  # nearly plain root compression: the gain stays
    assert float((no_gain_control(loud) - no_gain_control(quiet)).abs().max()) > 0.5 * spread


def test_the_pcen_config_defaults_are_the_constructors():
    spec = OmegaConf.to_container(compose_config(["norm=pcen"]).model.norm, resolve=True)
    assert spec.pop("type") == "pcen"
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(PCEN).parameters.items() if k != "n_bins"}
    assert spec == defaults


def train_frames(cfg) -> np.ndarray:
    """Every frame of the train split's clips, read straight from the store's files with numpy."""
    root = store_dir(store_settings(cfg))
    index = pd.read_csv(root / "index.csv")
    manifest = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv")
    train = index[manifest["split"].to_numpy()[index["clip_id"].to_numpy()] == "train"]
    shards = {name: np.fromfile(root / f"{name}.f16", dtype=np.float16).reshape(-1, cfg.features.n_bins)
              for name in train["shard"].unique()}
    return np.concatenate([shards[r.shard][r.start: r.start + r.length] for r in train.itertuples()])


def test_streamed_bin_moments_equal_numpy_over_the_train_frames(prepared_store, monkeypatch):
    monkeypatch.setattr(norm_stats, "CHUNK_FRAMES", 37)  # many merges
    store = FeatureStore(store_dir(store_settings(prepared_store)))
    manifest = pd.read_csv(Path(prepared_store.paths.prepared) / "manifest.csv")
    rows = np.flatnonzero(manifest["split"].to_numpy()[store.index["clip_id"].to_numpy()] == "train")
    mean, std = store_moments(store, rows).mean_std()
    frames = train_frames(prepared_store).astype(np.float64)
    np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, frames.std(axis=0), rtol=1e-9, atol=1e-9)


def test_bin_norm_gives_the_train_frames_zero_mean_and_unit_std_per_bin(prepared_store):
    frames = train_frames(prepared_store).astype(np.float32)
    moments = BinMoments(frames.shape[1])
    moments.add(frames)
    layer = BinNorm(frames.shape[1], min_std=1e-6)
    layer.set_statistics(*(torch.from_numpy(v).float() for v in moments.mean_std()))
    out = layer(torch.from_numpy(frames.T.copy())[None, None])[0, 0].double().numpy()  # (n_bins, frames)
    busy = frames.std(axis=0) > 1e-3
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=1)[busy], 1, atol=1e-4)


def test_bin_norm_floors_the_std_of_a_bin_silent_in_training():
    layer = BinNorm(2, min_std=0.1)
    layer.set_statistics(torch.tensor([-9.2, 0.0]), torch.tensor([0.0, 2.0]))
    out = layer(torch.tensor([[[[-9.2 + 1.0], [4.0]]]]))  # (1, 1, 2 bins, 1 frame)
    assert out.flatten().tolist() == pytest.approx([10.0, 2.0])


def test_trainable_pcen_parameters_receive_gradients_and_change_after_a_step():
    cfg = compose_config(["model=cnn", "norm=pcen", "model.norm.trainable=true"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, cfg.features.n_bins)
    names = [f"input_norm.log_{p}" for p in ("alpha", "delta", "r", "s")]
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    optimizer = build_optimizer(model, optimizer_settings(OmegaConf.to_container(cfg.optimizer, resolve=True)))
    x = torch.randn(4, 1, cfg.features.n_bins, cfg.features.window_frames) - 2
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    assert all(float(params[n].grad.abs().sum()) > 0 for n in names)
    optimizer.step()
    assert all(not torch.equal(params[n].detach(), before[n]) for n in names)
    fixed = build_model(compose_config(["model=cnn", "norm=pcen"]).model, 3, cfg.features.n_bins)
    assert not any(k.startswith("input_norm.") for k in fixed.state_dict())  # the config is its one source


def saved_bundle(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config(["model=cnn", *overrides])
    model = build_model(cfg.model, 2, cfg.features.n_bins)
    path = save_bundle(model.eval(), OmegaConf.to_container(cfg.model, resolve=True),
                       OmegaConf.to_container(cfg.features, resolve=True), ["a", "b"], tmp_path / "model.pt")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("change, message", [
    ({"type": "fancy"}, "model.norm.type=fancy: allowed: none, pcen, bin_norm"),
    ({"type": "pcen", "colour": 1}, "model.norm.colour: unknown key; allowed: type, alpha"),
    ({"type": "bin_norm", "alpha": 0.9}, "model.norm.alpha: unknown key; allowed: type, min_std"),
])
def test_a_bundle_with_a_bad_norm_is_refused_naming_the_key(tmp_path, change, message):
    bundle = saved_bundle(tmp_path)
    bundle["model"]["norm"] = change
    with pytest.raises(BundleError, match="model.pt: " + message):
        build_from_bundle(bundle)


def test_a_bundle_with_pcen_and_top_db_is_refused(tmp_path):
    bundle = saved_bundle(tmp_path, "norm=pcen")
    bundle["features"]["top_db"] = 40.0
    with pytest.raises(BundleError, match="model.norm.type=pcen: needs features.top_db=null"):
        build_from_bundle(bundle)


def test_a_bundle_written_before_model_norm_still_loads_without_normalisation(tmp_path):
    bundle = saved_bundle(tmp_path)
    del bundle["model"]["norm"]
    torch.save(bundle, tmp_path / "old.pt")
    model, _ = load_bundle(tmp_path / "old.pt")
    assert isinstance(model.input_norm, torch.nn.Identity)
    bin_norm = saved_bundle(tmp_path, "norm=bin_norm")
    assert {"input_norm.mean", "input_norm.std"} <= set(bin_norm["state_dict"])


def test_every_norm_option_composes_validates_and_its_schema_has_each_key():
    from audiocnn.config import config_groups, validate_config
    from audiocnn.models.settings import NORMS

    assert config_groups()["norm"] == ["bin_norm", "none", "pcen"]
    assert compose_config().model.norm == {"type": "none"}  # the default: existing results stay valid
    for option in config_groups()["norm"]:
        cfg = compose_config([f"norm={option}"])
        validate_config(cfg)
        assert cfg.model.norm.type == option
        assert [k for k in cfg.model.norm if k not in NORMS[option].model_fields] == []


def test_on_the_fly_bin_statistics_are_those_of_the_train_clips_centred_windows(prepared_store):
    from audiocnn.features.cqt import n_frames
    from audiocnn.experiment import data_module
    from audiocnn.training.norm_stats import fit_bin_norm

    cfg = prepared_store.copy()
    OmegaConf.update(cfg, "features.on_the_fly", True)
    f = cfg.features
    model = build_model(compose_config(["model=cnn", "norm=bin_norm"]).model, 8, f.n_bins)
    moments = fit_bin_norm(model, data_module(cfg))
    manifest = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv")
    cqt, frames = LogCQT.from_config(f), []
    for path in manifest.loc[manifest["split"] == "train", "path"]:
        wave = sf.read(path, dtype="float32")[0]
        start = max(n_frames(len(wave), f.hop_length) - f.window_frames, 0) // 2 * f.hop_length
        piece = np.zeros((f.window_frames - 1) * f.hop_length, np.float32)
        part = wave[start: start + len(piece)]
        piece[: len(part)] = part
        frames.append(cqt(torch.from_numpy(piece)[None])[0].T.to(torch.float16).double().numpy())
    frames = np.concatenate(frames)
    assert moments.count == len(frames)
    np.testing.assert_allclose(model.input_norm.mean.numpy(), frames.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(model.input_norm.std.numpy(), frames.std(axis=0), atol=1e-4)
