"""MLflow helpers: flattened params, runs on a SQLite store, FAILED runs, where runs go."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from audiocnn.repeats import run_name_of
from audiocnn.experiment import resolve_tracking, job_of
from audiocnn import tracking
from audiocnn.config import compose_config
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """One tracking folder for the module (creating a SQLite store takes a moment); MLflow's
    process-wide tracking URI is put back afterwards."""
    saved_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    yield tmp_path_factory.mktemp("tracking")
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(saved_uri)
    if saved_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved_env


@pytest.fixture
def cfg(store_root):
    return tiny_config(store_root)


def _client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking.uri)


def test_flatten_config_gives_dotted_string_params():
    cfg = OmegaConf.create({"a": {"b": 1, "c": [1, 2], "d": {"e": None}}, "f": "x", "g": 0.5,
                            "ref": "${a.b}"})
    assert tracking.flatten_config(OmegaConf.to_container(cfg, resolve=True)) == {"a.b": "1", "a.c": "[1, 2]", "a.d.e": "None", "f": "x", "g": "0.5",
                                            "ref": "1"}


def test_flatten_config_of_the_real_config_keeps_lists_whole():
    cfg = compose_config(["model=cnn"])
    flat = tracking.flatten_config(OmegaConf.to_container(cfg, resolve=True))
    assert all(isinstance(v, str) for v in flat.values())
    assert flat["optimizer.lr"] == str(cfg.optimizer.lr)
    assert flat["features.n_bins"] == "84"
    assert flat["model.blocks"].startswith("[{") and "'channels': 16" in flat["model.blocks"]
    assert not any(key.startswith("model.blocks.") for key in flat)
    assert all(len(v) <= tracking.MAX_PARAM_LENGTH for v in flat.values())


def test_open_run_records_tags_and_params_on_a_sqlite_store(cfg):
    assert cfg.tracking.uri.startswith("sqlite:///")
    params = tracking.flatten_config(OmegaConf.to_container(cfg, resolve=True))
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="tiny-run", tags={"data": "demo", "purpose": "test"}) as run:
        mlflow.log_params(params)
        mlflow.log_metric("val_loss", 0.25)
    assert Path(cfg.tracking.uri.removeprefix("sqlite:///")).is_file()
    stored = _client(cfg).get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "tiny-run"
    assert stored.data.tags["data"] == "demo" and stored.data.tags["purpose"] == "test"
    assert stored.data.params == params
    assert stored.data.metrics["val_loss"] == 0.25
    experiment = _client(cfg).get_experiment(stored.info.experiment_id)
    assert experiment.name == cfg.tracking.experiment

    # Resuming by id (as the evaluate stage does) adds to the same run.
    with tracking.open_run(tracking.store_of(cfg.tracking), run_id=run.info.run_id):
        mlflow.log_metric("test_accuracy", 0.5)
    resumed = _client(cfg).get_run(run.info.run_id)
    assert resumed.data.metrics["test_accuracy"] == 0.5 and resumed.info.status == "FINISHED"


def test_a_run_that_raises_is_marked_failed(cfg):
    with pytest.raises(ZeroDivisionError):
        with tracking.open_run(tracking.store_of(cfg.tracking), run_name="doomed") as run:
            1 / 0
    assert mlflow.active_run() is None
    assert _client(cfg).get_run(run.info.run_id).info.status == "FAILED"


def test_mlflow_tracking_uri_env_var_wins_over_the_config(store_root, monkeypatch):
    """The variable as the process starts (`config.user_tracking_uri`) replaces `tracking.uri`."""
    from audiocnn.config import user_tracking_uri, with_tracking_uri

    # The config points at a store that cannot even be created; the variable at the real one.
    cfg = tiny_config(store_root, f"tracking.uri=sqlite:///{store_root / 'missing' / 'nowhere.db'}")
    server = f"sqlite:///{store_root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    cfg = with_tracking_uri(cfg, user_tracking_uri())
    assert tracking.anchored(cfg.tracking.uri) == server
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="to-the-team-store") as run:
        pass
    assert MlflowClient(tracking_uri=server).get_run(run.info.run_id).info.status == "FINISHED"
    assert not (store_root / "missing").exists()
    assert os.environ["MLFLOW_TRACKING_URI"] == server  # the user's setting is left as it was


def test_a_configured_run_does_not_override_the_next_config(store_root):
    first = tiny_config(store_root)
    second = tiny_config(store_root, f"tracking.uri=sqlite:///{store_root / 'second.db'}")
    tracking.configure(tracking.store_of(first.tracking))
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; below the entry point audiocnn never reads it.
    assert tracking.anchored(second.tracking.uri) == second.tracking.uri
    with tracking.open_run(tracking.store_of(second.tracking), run_name="second") as run:
        pass
    assert MlflowClient(tracking_uri=second.tracking.uri).get_run(run.info.run_id).info.status == "FINISHED"


def test_run_tags_name_data_model_and_manifest(tmp_path):
    cfg = tiny_config(tmp_path)
    tags = tracking.run_tags(cfg.data.name, cfg.model.name, cfg.paths.prepared)
    assert tags["data"] == "demo" and tags["model"] == cfg.model.name
    assert "data.manifest_md5" not in tags  # no manifest yet
    manifest = Path(cfg.paths.prepared) / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("path,label\n")
    import hashlib

    tags = tracking.run_tags(cfg.data.name, cfg.model.name, cfg.paths.prepared)
    assert tags["data.manifest_md5"] == hashlib.md5(manifest.read_bytes()).hexdigest()
    assert run_name_of(cfg) == f"{cfg.model.name}-demo"
    assert run_name_of(cfg, "optimizer.lr=0.1") == f"{cfg.model.name}-demo-lr=0.1"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_runs_nest_under_the_parent_given(cfg):
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="parent") as parent:
        pass
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="child", parent_run_id=parent.info.run_id) as child:
        pass
    with tracking.open_run(tracking.store_of(cfg.tracking), run_id=child.info.run_id):  # resuming keeps the run where it is
        mlflow.log_metric("test_accuracy", 1.0)
    later = tracking.start_parent_run(tracking.store_of(cfg.tracking), "made-before-its-parent-was-known")
    tracking.set_parent(tracking.store_of(cfg.tracking), later, parent.info.run_id)
    for run_id in (child.info.run_id, later):
        assert _client(cfg).get_run(run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    tracking.end_parent_run(tracking.store_of(cfg.tracking), later)
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="alone") as alone:
        pass
    assert "mlflow.parentRunId" not in _client(cfg).get_run(alone.info.run_id).data.tags


def test_run_tags_join_dvc_experiments_and_hydra_jobs(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "try-cnn")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    tags = tracking.run_tags(cfg.data.name, cfg.model.name, cfg.paths.prepared)
    assert tags["dvc.exp_name"] == "try-cnn" and tags["dvc.exp_baseline_rev"] == "a" * 40
    assert "hydra.overrides" not in tags  # not inside a Hydra job


def test_relative_sqlite_store_is_anchored_at_the_dvc_root(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "tracking.uri=sqlite:///mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # a queued DVC experiment runs in a temporary copy
    assert tracking.anchored(cfg.tracking.uri) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    assert tracking.anchored(cfg.tracking.uri) == f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def test_an_unreachable_server_stops_training_before_any_work(tmp_path, monkeypatch):
    from tests.conftest import train

    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = tiny_config(tmp_path, f"tracking.uri={server}")
    with pytest.raises(tracking.TrackingUnavailable) as error:
        train(cfg)
    message = str(error.value)
    assert message.startswith(f"tracking.uri={server}: MLflow tracking server not reachable")
    assert "tracking.required=false" in message and "\n" not in message
    assert not Path(cfg.paths.prepared).exists() and not Path(cfg.paths.raw).exists()  # no work done


@pytest.mark.slow  # a subprocess of the entry point (10-20 s); the same check runs in-process in the fast tier
def test_the_entrypoint_refuses_in_one_line_when_the_server_is_down(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    server = f"http://127.0.0.1:{free_port()}"
    paths = [f"paths.{key}={tmp_path / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    result = subprocess.run([sys.executable, str(REPO / "pipelines/train.py"), *paths, f"hydra.run.dir={tmp_path}/h"],
                            env={**os.environ, "MLFLOW_TRACKING_URI": server}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: tracking.uri={server}: MLflow tracking server")
    assert not (tmp_path / "raw").exists()


def test_required_false_falls_back_to_the_local_store_and_says_so(tmp_path, monkeypatch, capsys):
    server = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the project root the local store is taken from
    cfg = tiny_config(tmp_path, f"tracking.uri={server}/", "tracking.required=false")
    local = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_tracking(cfg).uri == local
    assert f"{server}/ is not reachable" in capsys.readouterr().out
    assert cfg.tracking.uri == local  # the job's later steps use it without asking the server again
    with tracking.open_run(tracking.store_of(cfg.tracking), run_name="offline") as run:
        mlflow.log_metric("val_acc", 0.5)
    assert "not reachable" not in capsys.readouterr().out
    assert MlflowClient(tracking_uri=local).get_run(run.info.run_id).data.metrics["val_acc"] == 0.5


def test_a_training_run_that_crashes_is_marked_failed(prepared_store, tmp_path, monkeypatch):
    import lightning as L

    from audiocnn.experiment import train_job
    from audiocnn.training import train as train_module

    class Crash(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raise RuntimeError("boom in epoch 0")

    build_trainer = train_module.build_trainer

    def crashing_trainer(*args, **kwargs):
        trainer, checkpoint = build_trainer(*args, **kwargs)
        trainer.callbacks.append(Crash())
        return trainer, checkpoint

    monkeypatch.setattr(train_module, "build_trainer", crashing_trainer)
    cfg = tiny_config(tmp_path, f"paths.prepared={prepared_store.paths.prepared}",
                      f"paths.features={prepared_store.paths.features}", "tracking.run_name=crashing")
    with pytest.raises(RuntimeError, match="boom"):
        train_module.train(train_job(job_of(cfg)))
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="run_name = 'crashing'")
    assert list(runs["status"]) == ["FAILED"]


def test_mlflows_run_links_are_dropped_where_a_run_ends_and_other_output_passes(capsys):
    """MLflow prints these two lines when a run on a server ends (`_log_url`); without the environment
    switch they are filtered from stdout around the end of the run (the real flow: tests/test_ui.py)."""
    from audiocnn.tracking.owners import without_run_links

    with without_run_links():
        print("tracking: something worth seeing")
        print("\N{RUNNER} View run tiny at: http://127.0.0.1:5000/#/experiments/1/runs/abc")
        print("\N{TEST TUBE} View experiment at: http://127.0.0.1:5000/#/experiments/1")
    assert capsys.readouterr().out == "tracking: something worth seeing\n"
