"""Ensembles: members' probabilities averaged, every member reported beside the ensemble."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from audiocnn.experiment import evaluate_model as evaluate
from audiocnn.features.cqt import pick_device
from audiocnn.models.bundle import load_bundle as load_trained
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.vote import predict_probabilities
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
    root, run_id, folder = members
    cfg = tiny_config(root, f"ensemble=[{run_id},{folder}]")
    metrics = evaluate(cfg)

    data = WindowDataModule(cfg)
    probabilities = []
    for source in (f"runs:/{run_id}/model", folder):
        model, _ = load_trained(source)
        p, labels = predict_probabilities(model, data.test_dataloader(), pick_device("cpu"))
        probabilities.append(p)
    expected = (torch.stack(probabilities).mean(0).argmax(1) == labels).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected)

    report = json.loads((root / "metrics" / "ensemble" / "ensemble.json").read_text())
    assert [m["member"] for m in report["members"]] == [run_id, folder]
    assert [m["model"] for m in report["members"]] == ["cnn", "crnn_gru"]
    assert report["ensemble"]["accuracy"] == pytest.approx(expected)
    assert not (root / "metrics" / "test.json").exists(), "the single-model outputs are left alone"

    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.model = 'ensemble'")
    assert len(runs) == 1 and runs.iloc[0]["params.member_0"] == run_id
    assert runs.iloc[0]["metrics.test_accuracy"] == pytest.approx(expected)


def test_members_on_other_classes_are_refused(members, tmp_path):
    root, run_id, folder = members
    other = tiny_config(tmp_path, "data.classes=[pluck,bell]", f"ensemble=[{folder}]")
    from audiocnn.data.prepare import prepare
    from audiocnn.features.featurize import featurize

    prepare(other)
    featurize(other)
    with pytest.raises(ValueError, match="was trained on classes"):
        evaluate(other)
