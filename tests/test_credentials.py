"""Credentials are never recorded: a real `mlflow server --app-name basic-auth` on loopback, a tiny
training through the real entry point logged to it with `http://admin:<password>@...`, and every
param, tag, run name, logged model, artifact and line printed read back for the password."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from audiocnn.experiment import resolve_tracking
from audiocnn import tracking
from audiocnn.tracking import names
from tests.conftest import REPO, TINY, stop_process, tiny_config
from tests.test_serving import wait_for
from tests.test_tracking import free_port

pytestmark = pytest.mark.slow  # a real basic-auth MLflow server (#24: the credentials server tests stay, in the slow tier)

PASSWORD = f"Pw-{secrets.token_hex(8)}"
TOKEN = f"tok{secrets.token_hex(6)}"
OTHER_SECRET = f"db{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`http://127.0.0.1:PORT` of MLflow's basic-auth server (admin / PASSWORD) over a tmp folder."""
    pytest.importorskip("flask_wtf", reason="mlflow[auth] not installed (pip install 'mlflow[auth]')")
    port, home = free_port(), tmp_path_factory.mktemp("auth-server")
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri",
         f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "artifacts"),
         "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"127.0.0.1:{port}"
    try:
        wait_for(f"http://{url}/health", process)
        yield url
    finally:
        stop_process(process)


def _overrides(tmp_path: Path, prepared_store, uri: str, *extra: str) -> list[str]:
    """A tiny training's overrides (the model logged, no ONNX) with tracking.uri=`uri`."""
    paths = [f"paths.{key}={tmp_path / key}" for key in ("raw", "models", "metrics")]
    paths += [f"paths.prepared={prepared_store.paths.prepared}", f"paths.features={prepared_store.paths.features}"]
    tiny = [o for o in TINY if o != "tracking.log_model=false"] + ["tracking.export_onnx=false"]
    return [*tiny, *paths, f"tracking.uri={uri}", *extra]


def _train(overrides: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    """`python pipelines/train.py <overrides>`: a Hydra job (train, log the model, evaluate)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, str(REPO / "pipelines/train.py"), *overrides, f"hydra.run.dir={run_dir}"],
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a training through the entry point, logged to a real server
def test_a_run_logged_to_a_basic_auth_server_records_no_credential(auth_server, prepared_store, tmp_path):
    uri = f"http://admin:{PASSWORD}@{auth_server}"
    overrides = _overrides(tmp_path, prepared_store, uri, f"+deploy.api_token={TOKEN}",
                           f"+deploy.db_password={OTHER_SECRET}", "optimizer.lr=0.002")
    result = _train(overrides, tmp_path / "h")
    assert result.returncode == 0, result.stderr[-3000:]
    secrets_ = (PASSWORD, TOKEN, OTHER_SECRET)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("audiocnn")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    params, tags = run.data.params, run.data.tags
    assert params["tracking.uri"] == f"http://***@{auth_server}"
    assert params["deploy.api_token"] == params["deploy.db_password"] == "***"
    assert "+deploy.api_token=***" in tags["hydra.overrides"] and "tracking.uri=http://***@" in tags["hydra.overrides"]
    assert run.info.run_name == names.run_name("crnn_gru", "demo", overrides)  # no path, URI or secret in it
    assert len(run.info.run_name) <= names.MAX_NAME_LENGTH and "/" not in run.info.run_name
    models = client.search_logged_models([experiment.experiment_id])
    recorded = [run.info.run_name, *params.items(), *tags.items(), *experiment.tags.items(),
                *(item for m in models for item in (*m.params.items(), *m.tags.items(), m.name)),
                result.stdout, result.stderr]
    for text in map(str, recorded):
        leaks = [line for line in text.splitlines() if any(secret in line for secret in secrets_)]
        assert not leaks, leaks[:5]
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    for path in (p for p in downloaded.rglob("*") if p.is_file()):
        assert not any(secret.encode() in path.read_bytes() for secret in secrets_), path


def test_the_health_check_uses_the_clients_credentials(auth_server, monkeypatch):
    assert tracking.server_problem(f"http://admin:{PASSWORD}@{auth_server}") is None
    assert tracking.server_problem(f"http://{auth_server}").startswith("credentials required (HTTP 401)")
    assert tracking.server_problem(f"http://admin:wrong@{auth_server}") == "credentials refused (HTTP 401)"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert tracking.server_problem(f"http://{auth_server}") is None  # as the MLflow client reads them


def test_wrong_credentials_stop_a_stage_in_one_line_without_the_password(auth_server, tmp_path):
    cfg = tiny_config(tmp_path, f"tracking.uri=http://admin:not-{PASSWORD}@{auth_server}")
    with pytest.raises(tracking.TrackingUnavailable) as error:
        resolve_tracking(cfg)
    message = str(error.value)
    assert message.startswith(f"tracking.uri=http://***@{auth_server}: MLflow tracking server: credentials refused")
    assert "\n" not in message and PASSWORD not in message


def test_the_entrypoint_refuses_wrong_credentials_before_any_work(auth_server, prepared_store, tmp_path):
    result = _train(_overrides(tmp_path, prepared_store, f"http://admin:bad{PASSWORD}@{auth_server}"), tmp_path / "h")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking.uri=http://***@{auth_server}: MLflow tracking server: credentials "
                           "refused (HTTP 401)"), last
    assert PASSWORD not in result.stdout + result.stderr
    assert not (tmp_path / "models").exists()


def test_configure_writes_no_credential_to_the_environment_and_the_client_authenticates_from_the_uri(
        auth_server, tmp_path, monkeypatch):
    """The user info stays in the URI MLflow's client gets (requests sends it as basic auth); audiocnn
    moves nothing into the process environment."""
    import mlflow

    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(variable, raising=False)  # the environment may hold some (put back after the test)
    cfg = tiny_config(tmp_path, f"tracking.uri=http://admin:{PASSWORD}@{auth_server}")
    before = dict(os.environ)
    assert tracking.configure(tracking.store_of(cfg.tracking)) == f"http://admin:{PASSWORD}@{auth_server}"
    changed = {k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)}
    assert changed <= {"MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"}  # mlflow.set_tracking_uri's, set_experiment's
    experiment = MlflowClient().get_experiment_by_name(cfg.tracking.experiment)  # an authenticated call
    assert experiment is not None
    mlflow.set_tracking_uri(f"http://{auth_server}")  # the same server without the user info: refused
    with pytest.raises(mlflow.exceptions.MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient().get_experiment_by_name(cfg.tracking.experiment)


def test_a_host_the_server_does_not_allow_is_told_apart_from_missing_credentials(tmp_path, monkeypatch):
    """A plain `mlflow server` on 127.0.0.2 answers /health but refuses API calls whose Host it does
    not allow (HTTP 403): the reason names --allowed-hosts, not only credentials."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # the environment may hold some (put back after the test)
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "-h", "127.0.0.2", "-p", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.2:{port}/health", process)
        problem = tracking.server_problem(f"http://127.0.0.2:{port}")
        assert problem.startswith("the server refused the request (HTTP 403)") and "--allowed-hosts" in problem
    finally:
        stop_process(process)
