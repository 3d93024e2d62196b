"""Test-time augmentation (`models.tta.Views`, applied by `models.scorer.WindowScorer`): shifted CQT views
padded with the floor, the mean of their softmax, in evaluate (`evaluate.tta`) and predict (`tta=` /
`--tta-*`) alike."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict
from torch import nn

from audiocnn import load_model
from audiocnn.experiment import job_of
from audiocnn.cli import main
from audiocnn.errors import ConfigError
from audiocnn.models.head import CQTClassifier
from audiocnn.models.scorer import WindowScorer, shift
from audiocnn.models.tta import Views
from tests.conftest import tiny_config, train

FLOOR = math.log(1e-4)


def test_a_bright_bin_moves_by_the_shift_and_the_rest_is_floor():
    x = torch.full((1, 1, 12, 10), FLOOR)
    x[0, 0, 5, 4] = 3.0
    for bins, frames, where in ((2, 0, (7, 4)), (-3, 0, (2, 4)), (0, 5, (5, 9)), (0, -4, (5, 0)), (1, 2, (6, 6))):
        expected = torch.full_like(x, FLOOR)
        expected[0, 0, where[0], where[1]] = 3.0
        assert torch.equal(shift(x, bins, frames, FLOOR), expected), (bins, frames)
    assert torch.equal(shift(x, 7, 0, FLOOR), torch.full_like(x, FLOOR))  # shifted out of the top: gone, no wrap


def test_shifts_pad_with_the_floor_and_never_wrap():
    x = torch.randn(2, 1, 8, 6)
    up = shift(x, 3, 0, FLOOR)
    assert torch.equal(up[..., 3:, :], x[..., :-3, :]) and torch.all(up[..., :3, :] == FLOOR)
    down = shift(x, -2, 0, FLOOR)
    assert torch.equal(down[..., :-2, :], x[..., 2:, :]) and torch.all(down[..., -2:, :] == FLOOR)
    later = shift(x, 0, 4, FLOOR)
    assert torch.equal(later[..., 4:], x[..., :-4]) and torch.all(later[..., :4] == FLOOR)
    assert shift(x, 0, 0, FLOOR) is x


class LinearModel(CQTClassifier):
    """(batch, 1, n_bins, frames) after `frontend` -> (batch, n_classes): one linear layer over the window."""

    def __init__(self, n_bins: int, frames: int, n_classes: int, frontend: nn.Module | None = None):
        super().__init__(frontend)
        self.fc = nn.Linear(n_bins * frames, n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.fc(features.flatten(1))


def linear_model(n_bins: int = 8, frames: int = 6, n_classes: int = 3, frontend: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return LinearModel(n_bins, frames, n_classes, frontend).eval()


def window_probabilities(model: nn.Module, x: torch.Tensor, views: Views, floor: float, temperature: float = 1.0):
    return WindowScorer(model, views, floor, temperature)(x)


def test_the_window_probabilities_are_the_mean_of_the_views_softmax_at_the_temperature():
    model, x = linear_model(), torch.randn(5, 1, 8, 6) * 2
    views = Views(pitch_bins=(-2, 0, 2), time_frames=(0, 3))
    for temperature in (1.0, 2.5):
        manual = torch.stack([(model(shift(x, k, t, FLOOR)) / temperature).softmax(dim=1)
                              for k in (-2, 0, 2) for t in (0, 3)]).mean(dim=0)
        got = window_probabilities(model, x, views, FLOOR, temperature)
        torch.testing.assert_close(got, manual)
        torch.testing.assert_close(got.sum(dim=1), torch.ones(5))
    assert not torch.allclose(window_probabilities(model, x, views, FLOOR), model(x).softmax(dim=1))


def test_the_identity_view_alone_is_exactly_no_augmentation():
    model, x = linear_model(), torch.randn(5, 1, 8, 6)
    assert Views.from_config(None) == Views.from_config({"pitch_bins": [0], "time_frames": [0]}) == Views()
    assert torch.equal(window_probabilities(model, x, Views(), FLOOR), model(x).softmax(dim=1))


def test_a_shift_as_large_as_the_window_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"^tta.pitch_bins=\[0, 84\]: each shift must be smaller than the "
                                          r"window's 84 bins$"):
        Views((0, 84), (0,)).check(84, 128)
    with pytest.raises(ConfigError, match=r"^tta.time_frames=\[-128\]"):
        Views((0,), (-128,)).check(84, 128)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A cnn trained 2 epochs on the tiny demo data, evaluated without `evaluate.tta`, with the identity
    alone and with pitch and time views; {name: (test.json, predictions.csv)} and the config."""
    from audiocnn.experiment import evaluate_model, job_of

    root = tmp_path_factory.mktemp("tta")
    cfg = tiny_config(root, "model=cnn", "evaluate.explain=false", "tracking.export_onnx=false")
    train(cfg)
    runs = {}
    for name, tta in (("absent", None), ("identity", {"pitch_bins": [0], "time_frames": [0]}),
                      ("views", {"pitch_bins": [-2, 0, 2], "time_frames": [0, 8]})):
        with open_dict(cfg):
            if tta is None:
                del cfg.evaluate["tta"]
            else:
                cfg.evaluate.tta = tta
        evaluate_model(job_of(cfg))
        out = Path(cfg.paths.metrics)
        runs[name] = (json.loads((out / "test.json").read_text()),
                      pd.read_csv(out / "predictions.csv", dtype={"actual": str, "predicted": str}))
    return cfg, runs


def test_identity_tta_in_evaluate_equals_no_tta_exactly(evaluated):
    _, runs = evaluated
    (absent, absent_rows), (identity, identity_rows) = runs["absent"], runs["identity"]
    assert identity == absent
    pd.testing.assert_frame_equal(identity_rows, absent_rows)
    assert identity["tta"] == "pitch_bins=[0], time_frames=[0]"


def test_tta_views_change_evaluate_and_predict_reproduces_them(evaluated):
    cfg, runs = evaluated
    views, rows = runs["views"]
    assert views["tta"] == "pitch_bins=[-2, 0, 2], time_frames=[0, 8]"
    assert not np.array_equal(rows["confidence"], runs["absent"][1]["confidence"])
    tta = {"pitch_bins": [-2, 0, 2], "time_frames": [0, 8]}
    records = load_model(cfg.paths.models, tta=tta).predict(rows["path"].tolist())
    assert [r["label"] for r in records] == rows["predicted"].tolist()
    np.testing.assert_allclose([r["confidence"] for r in records], rows["confidence"], atol=1e-4)
    plain = load_model(cfg.paths.models).predict(rows["path"].tolist())
    np.testing.assert_allclose([r["confidence"] for r in plain], runs["absent"][1]["confidence"], atol=1e-4)


def test_predict_cli_takes_tta_views_and_refuses_a_shift_beyond_the_window(evaluated, tmp_path, capsys):
    cfg, runs = evaluated
    paths = runs["views"][1]["path"].tolist()[:3]
    out = tmp_path / "preds.csv"
    assert main(["predict", *paths, "--model", cfg.paths.models, "--output", str(out),
                 "--tta-pitch-bins=-2,0,2", "--tta-time-frames", "0,8"]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["confidence"], runs["views"][1]["confidence"][:3], atol=1e-4)
    capsys.readouterr()
    assert main(["predict", *paths, "--model", cfg.paths.models, "--tta-pitch-bins", "0,84"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: tta.pitch_bins=[0, 84]: each shift must be smaller than the window's 84 bins"]


def test_a_model_trained_on_the_fly_is_shifted_after_its_front_end():
    """Evaluate feeds such a model waveform windows: the views are of its CQT, not of the samples."""
    from audiocnn.config import compose_config
    from audiocnn.features.cqt import CQTFrontend

    frontend = CQTFrontend.from_config(compose_config([]).features)
    torch.manual_seed(0)
    wave = torch.randn(2, 512 * 15)
    frames = frontend(wave)  # (2, 1, 84, 16)
    model = linear_model(frames.shape[2], frames.shape[3], frontend=frontend)
    views = Views(pitch_bins=(0, 3), time_frames=(0, -2))
    got = WindowScorer(model, views, FLOOR).logits(wave)
    expected = torch.stack([model.classify(shift(frames, k, t, FLOOR)) for k, t in views.shifts])
    torch.testing.assert_close(got, expected)


def test_an_export_with_tta_views_gives_the_bundles_answers_with_those_views(prepared_store, tmp_path):
    from tests.conftest import untrained_bundle
    from tests.test_export import clips

    bundle_path = untrained_bundle(tmp_path / "m", "features.top_db=60")
    bundle = torch.load(bundle_path, weights_only=True)  # an untrained model is near uniform: sharpen it,
    bundle["state_dict"]["head.fc.weight"] *= 50  # so that what the views change is well above float error
    torch.save(bundle, bundle_path)
    folder = bundle_path.parent
    inputs = clips(prepared_store, tmp_path, prepared_store.features.sr)
    out = tmp_path / "views.onnx"
    assert main(["export", "--model", str(folder), "--format", "onnx", "--output", str(out),
                 "--tta-pitch-bins=-2,0,2", "--tta-time-frames=0,8"]) == 0
    tta = {"pitch_bins": [-2, 0, 2], "time_frames": [0, 8]}
    exported = load_model(out).predict(inputs)
    eager = load_model(folder, tta=tta).predict(inputs)
    plain = load_model(folder).predict(inputs)
    for a, b, c in zip(eager, exported, plain):
        np.testing.assert_allclose(list(b["probabilities"].values()), list(a["probabilities"].values()), atol=1e-4)
        assert not np.allclose(list(c["probabilities"].values()), list(a["probabilities"].values()), atol=1e-3)
    with pytest.raises(ValueError, match="exported with"):
        load_model(out, tta=tta)


def test_the_logged_model_scores_with_the_views_of_evaluate_tta_and_is_relogged_when_they_change(evaluated):
    """`tracking.log_model`: the pyfunc gets `evaluate.tta` in its model_config and answers as evaluate
    did with those views; a finished training whose logged model has other views is logged again."""
    import base64
    import copy

    import mlflow

    from audiocnn.experiment import train_model

    cfg, runs = evaluated
    served = copy.deepcopy(cfg)
    with open_dict(served):
        served.tracking.log_model = True
        served.evaluate.tta = {"pitch_bins": [-2, 0, 2], "time_frames": [0, 8]}
    summary = train_model(job_of(served), skip_finished=True)  # trained already: only logged
    assert summary["model_config"]["tta"] == {"pitch_bins": [-2, 0, 2], "time_frames": [0, 8]}
    rows = runs["views"][1][:4]
    clips = pd.DataFrame({"audio_base64": [base64.b64encode(Path(p).read_bytes()).decode() for p in rows["path"]]})
    mlflow.set_tracking_uri(cfg.tracking.uri)
    answers = mlflow.pyfunc.load_model(summary["model_uri"]).predict(clips)
    np.testing.assert_allclose([max(a["probabilities"].values()) for a in answers], rows["confidence"], atol=1e-4)
    assert train_model(job_of(served), skip_finished=True)["model_uri"] == summary["model_uri"]  # same views: kept
    with open_dict(served):
        served.evaluate.tta = {"pitch_bins": [0], "time_frames": [0]}
    plain = train_model(job_of(served), skip_finished=True)
    assert plain["model_uri"] != summary["model_uri"] and "tta" not in plain["model_config"]
    answers = mlflow.pyfunc.load_model(plain["model_uri"]).predict(clips)
    np.testing.assert_allclose([max(a["probabilities"].values()) for a in answers],
                               runs["absent"][1]["confidence"][:4], atol=1e-4)


@pytest.mark.parametrize("tta, reason", [
    ({"pitch_bins": list(range(-40, 40))}, r"^tta.pitch_bins x tta.time_frames: 80 x 1 = 80 views; at most 64$"),
    ({"pitch_bins": "__import__(os)"}, r"^tta.pitch_bins='__import__\(os\)': must be a list of whole numbers"),
    ({"time_frames": [0.5]}, r"^tta.time_frames=\[0.5\]: must be a list of whole numbers"),
])
def test_a_served_model_config_with_hostile_views_is_refused_at_load(tmp_path, tta, reason):
    """A logged model's MLmodel is outside input: its views are bounded and checked, never evaluated."""
    from types import SimpleNamespace

    from audiocnn.inference.pyfunc import AudioClassifier
    from tests.conftest import untrained_bundle

    context = SimpleNamespace(artifacts={"model.pt": str(untrained_bundle(tmp_path))}, model_config={"tta": tta})
    with pytest.raises(ConfigError, match=reason):
        AudioClassifier().load_context(context)
