"""What the MLflow UI's columns show for a training run: Dataset (the manifest, digest its MD5),
Source (MLflow's `mlflow.source.*` tags), Models (the logged model, linked to its run), and the
experiment opening in the model-training view (`mlflow.experimentKind`)."""

from __future__ import annotations

import copy

import hashlib
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from audiocnn import tracking
from tests.conftest import REPO, tiny_config, train


@pytest.fixture(scope="module")
def trained(prepared_store, tmp_path_factory):
    """(config, run.json summary) of one tiny training whose servable model is logged."""
    root = tmp_path_factory.mktemp("lineage")
    cfg = tiny_config(root, f"paths.prepared={prepared_store.paths.prepared}",
                      f"paths.features={prepared_store.paths.features}", "tracking.log_model=true",
                      "tracking.export_onnx=false", "tracking.registered_model=null")
    return cfg, train(cfg)


def test_the_run_logs_the_manifest_as_its_dataset(trained):
    cfg, summary = trained
    run = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(summary["run_id"])
    manifest = Path(cfg.paths.prepared) / "manifest.csv"
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "demo"
    assert dataset_input.dataset.digest == hashlib.md5(manifest.read_bytes()).hexdigest()
    assert dataset_input.dataset.digest == run.data.tags["data.manifest_md5"]
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


def test_the_run_has_mlflows_source_tags(trained):
    cfg, summary = trained
    tags = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(summary["run_id"]).data.tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.source.git.commit"] == commit
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    if branch != "HEAD":
        assert tags["mlflow.source.git.branch"] == branch


def test_the_logged_model_is_linked_to_its_run(trained):
    cfg, summary = trained
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(summary["run_id"])
    models = client.search_logged_models([run.info.experiment_id])
    [model] = [m for m in models if m.source_run_id == run.info.run_id]
    assert summary["model_uri"] == f"models:/{model.model_id}"
    assert model.model_id in [output.model_id for output in run.outputs.model_outputs]  # the Models column


def test_the_experiment_opens_in_the_model_training_view(trained):
    cfg, _ = trained
    experiment = MlflowClient(tracking_uri=cfg.tracking.uri).get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_parent_run_has_the_dataset_and_source_too(trained, tmp_path):
    """The parent run of repeated trainings (`repeats.start`), as the MLflow UI lists it."""
    from audiocnn import repeats

    cfg = copy.deepcopy(trained[0])
    cfg.trainer.seeds, cfg.paths.models = [0, 1], str(tmp_path / "models")
    parent = repeats.start(cfg, repeats.variants(cfg), tracking.store_of(cfg.tracking))
    tracking.end_parent_run(tracking.store_of(cfg.tracking), parent)
    run = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(parent)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["demo"]
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
