"""The MLflow UI end to end: a real `mlflow server` on loopback (SQLite + artifacts folder),
a short training logged to it through MLFLOW_TRACKING_URI, and the UI rendered by headless
Chromium showing the run and its metrics, and in the runs table its name, Dataset, Source and
Models columns, in the model-training view that the URL audiocnn prints opens. Skipped (saying why) when Chromium is not installed
(Debian: `apt-get install chromium`; .ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import stop_process, tiny_config
from tests.test_serving import wait_for
from tests.test_tracking import free_port

pytestmark = pytest.mark.slow

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.fixture
def server(tmp_path):
    """URL of a real `mlflow server` over tmp_path/server/{mlflow.db,artifacts}; killed afterwards."""
    port, home = free_port(), tmp_path / "server"
    home.mkdir()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "artifacts"),
         "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", process)
        yield url
    finally:
        stop_process(process)


def rendered(url: str, profile: Path) -> str:
    """The DOM of `url` after its scripts ran, from headless Chromium."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         "--virtual-time-budget=15000", "--window-size=2400,1200", "--dump-dom", url],  # wide: every column drawn
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium): "
                                              "the MLflow UI cannot be rendered")
def test_a_run_logged_to_a_server_shows_in_the_mlflow_ui(server, prepared_store, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from audiocnn.evaluation.evaluate import evaluate

    from audiocnn.experiment import evaluate_job, job_of
    from tests.conftest import train

    cfg = tiny_config(tmp_path, f"tracking.uri={server}", f"paths.prepared={prepared_store.paths.prepared}",
                      f"paths.features={prepared_store.paths.features}", "tracking.log_model=true",
                      "tracking.export_onnx=false", "tracking.registered_model=null")
    summary = train(cfg, run_name_suffix=f"optimizer.lr=0.002,paths.models={tmp_path}/models")
    evaluate(evaluate_job(job_of(cfg)))
    printed = capsys.readouterr().out
    assert summary["tracking_uri"] == server
    run = MlflowClient(tracking_uri=server).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the config's local store

    experiment = f"{server}/#/experiments/{summary['experiment_id']}"
    table = rendered(f"{experiment}/runs", tmp_path / "chromium-1")
    assert summary["run_name"] == "crnn_gru-demo-lr=0.002" and summary["run_name"] in table  # no path in it
    tags = run.data.tags
    assert f"demo ({run.inputs.dataset_inputs[0].dataset.digest}" in table  # Dataset: name (digest)
    assert Path(tags["mlflow.source.name"]).name in table  # Source
    assert summary["model_uri"].removeprefix("models:/") in table  # Models: the logged model, linked
    # The URL train prints opens the model-training view (its nav has the model registry, not GenAI's judges).
    url = f"{experiment}/runs/{summary['run_id']}?workflowType=machine_learning"
    assert f"train: in the MLflow UI: {url}" in printed and "View run" not in printed
    view = rendered(url.replace(f"/runs/{summary['run_id']}", "/runs"), tmp_path / "chromium-3")
    assert "Model registry" in view and "Judges" not in view and "Judges" in table
    page = rendered(f"{experiment}/runs/{summary['run_id']}", tmp_path / "chromium-2")
    for metric in ("val_acc", "val_loss", "train_loss", "best_val_acc", "test_accuracy"):
        assert metric in page, f"{metric} not in the run page"
