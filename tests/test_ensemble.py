"""Ensembles: members' probabilities averaged, every member reported beside the ensemble."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.evaluation.calibration import expected_calibration_error
from audiocnn.experiment import evaluate_model, job_of
from audiocnn.features.cqt import pick_device
from audiocnn.models.bundle import load_bundle as load_trained
from audiocnn.experiment import data_module
from audiocnn.evaluation.scoring import predict_probabilities
from audiocnn.models.scorer import WindowScorer
from tests.conftest import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A cnn (logged to MLflow, used by run id) and a crnn_gru (used by folder) on one tiny dataset."""
    root = tmp_path_factory.mktemp("ensemble")
    cnn = tiny_config(root, "model=cnn", f"paths.models={root / 'cnn'}", "tracking.log_model=true")
    run_id = train(cnn)["run_id"]
    crnn = tiny_config(root, "model=crnn_gru", f"paths.models={root / 'crnn'}")
    train(crnn)
    return root, run_id, str(root / "crnn")


def test_ensemble_averages_member_probabilities(members):
    """The ensemble's per-clip answer is the mean of its members' probabilities, each member scored on
    its own with `predict_probabilities`: predictions.csv's predicted class and confidence per clip, and
    the metrics built on them (accuracy, ECE)."""
    root, run_id, folder = members
    cfg = tiny_config(root, f"ensemble=[{run_id},{folder}]")
    metrics = evaluate_model(job_of(cfg))

    data = data_module(cfg)
    probabilities = []
    for source in (f"runs:/{run_id}/model", folder):
        model, _ = load_trained(source)
        p, labels = predict_probabilities(WindowScorer(model), data.test_dataloader(), pick_device("cpu"))
        probabilities.append(p)
    mean = torch.stack(probabilities).mean(0)
    assert not torch.allclose(probabilities[0], probabilities[1], atol=1e-3), "members too alike to tell a mean"
    expected = (mean.argmax(1) == labels).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected)

    # Clip by clip: the written confidence is the mean probability of the written class, its largest.
    written = pd.read_csv(root / "metrics" / "ensemble" / "predictions.csv")
    assert written["path"].tolist() == data.store.index.iloc[data.rows("test")]["path"].tolist()
    assert written["predicted"].tolist() == [data.classes[i] for i in mean.argmax(1).tolist()]
    np.testing.assert_allclose(written["confidence"].to_numpy(), mean.max(1).values.numpy(), atol=1e-4)
    assert metrics["ece"] == pytest.approx(round(expected_calibration_error(mean, labels, cfg.evaluate.calibration_bins), 4))

    report = json.loads((root / "metrics" / "ensemble" / "ensemble.json").read_text())
    assert [m["member"] for m in report["members"]] == [run_id, folder]
    assert [m["model"] for m in report["members"]] == ["cnn", "crnn_gru"]
    assert report["ensemble"]["accuracy"] == pytest.approx(expected)
    assert not (root / "metrics" / "test.json").exists(), "the single-model outputs are left alone"

    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.model = 'ensemble'")
    assert len(runs) == 1 and runs.iloc[0]["params.member_0"] == run_id
    assert runs.iloc[0]["metrics.test_accuracy"] == pytest.approx(expected)


def test_ensemble_answer_is_the_clipwise_mean_of_confident_members(members, tmp_path):
    """With members that disagree and are sure of themselves (the trained cnn with its head's logits
    scaled up 200 times, next to the crnn), the ensemble's predictions.csv holds, clip by clip, the
    argmax and the max of the arithmetic mean of the members' own `predict_probabilities`, which here
    is far from any one member's answer and from a geometric mean."""
    root, run_id, folder = members
    bundle = torch.load(root / "cnn" / "model.pt", weights_only=True)
    bundle["state_dict"] = {k: v * 200 if k.startswith("head.") else v for k, v in bundle["state_dict"].items()}
    (tmp_path / "sharp").mkdir()
    torch.save(bundle, tmp_path / "sharp" / "model.pt")
    sources = [str(tmp_path / "sharp"), folder]
    cfg = tiny_config(root, f"ensemble=[{','.join(sources)}]", f"paths.metrics={tmp_path / 'metrics'}")
    metrics = evaluate_model(job_of(cfg))

    data = data_module(cfg)
    probabilities = [predict_probabilities(WindowScorer(load_trained(s)[0]), data.test_dataloader(),
                                           pick_device("cpu"))[0] for s in sources]
    stacked = torch.stack(probabilities)
    mean = stacked.mean(0)
    # The clips tell the mean apart from its alternatives (else the check below would prove nothing).
    geometric = stacked.log().mean(0).softmax(1)
    for other in (*probabilities, geometric):
        assert (other.max(1).values - mean.max(1).values).abs().max() > 0.05

    written = pd.read_csv(tmp_path / "metrics" / "ensemble" / "predictions.csv")
    assert written["predicted"].tolist() == [data.classes[i] for i in mean.argmax(1).tolist()]
    np.testing.assert_allclose(written["confidence"].to_numpy(), mean.max(1).values.numpy(), atol=1e-4)
    labels = torch.as_tensor(data.labels[data.rows("test")])
    assert metrics["accuracy"] == pytest.approx((mean.argmax(1) == labels).float().mean().item())
    assert metrics["ece"] == pytest.approx(round(expected_calibration_error(mean, labels, cfg.evaluate.calibration_bins), 4))


def test_members_on_other_classes_are_refused(members, tmp_path):
    root, run_id, folder = members
    other = tiny_config(tmp_path, "data.classes=[pluck,bell]", f"ensemble=[{folder}]")
    from audiocnn.data.prepare import prepare
    from audiocnn.features.featurize import featurize

    prepare(prepare_settings(other))
    featurize(store_settings(other))
    with pytest.raises(ValueError, match="was trained on classes"):
        evaluate_model(job_of(other))
