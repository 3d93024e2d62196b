"""Shared fixtures: a tiny demo config with every path under a temporary folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.config import compose_config

REPO = Path(__file__).resolve().parent.parent

TINY = [
    "data.clips_per_class=6",
    "features.batch_size=8",
    "features.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.batch_size=8",
    "trainer.log_every_n_steps=1",
    "tracking.log_model=false",
]


def tiny_config(root: Path, *overrides: str):
    """The default config shrunk for tests, writing only under `root`."""
    paths = [f"paths.{key}={root / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    cfg = compose_config([*TINY, *paths, f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *overrides])
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    return tiny_config(tmp_path)


@pytest.fixture(scope="session")
def prepared_store(tmp_path_factory):
    """A prepared + featurized tiny demo dataset, shared by the tests that only read it."""
    from audiocnn.data.prepare import prepare
    from audiocnn.features.featurize import featurize

    root = tmp_path_factory.mktemp("store")
    cfg = tiny_config(root)
    prepare(prepare_settings(cfg))
    featurize(store_settings(cfg))
    return cfg


@pytest.fixture(autouse=True, scope="session")
def _no_external_tracking_server():
    """Tests never write to a tracking server set in the developer's environment (audiocnn reads
    MLFLOW_TRACKING_URI only where a process starts: `audiocnn.config.user_tracking_uri`)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def train(cfg, run_name_suffix: str = "") -> dict:
    """What a Hydra job does before it evaluates (`audiocnn.experiment.run_experiment`): check the
    tracking server, make the missing inputs (prepare, featurize), train, log the servable model."""
    from audiocnn.experiment import ensure_inputs, job_of, train_model

    job = job_of(cfg)
    ensure_inputs(job.settings)
    return train_model(job, run_name_suffix=run_name_suffix)


def untrained_bundle(root: Path, *overrides: str) -> Path:
    """`root/model.pt` of an untrained model (`model=cnn` unless overridden): a real bundle in a
    second, for tests of what happens around the model (requests, decoding), not of training.
    Its weights are drawn from seed 0 (the global generator is left as it was), so a test that
    compares answers compares the same model on every run."""
    import torch
    from omegaconf import OmegaConf

    from audiocnn.models import build_model
    from audiocnn.models.bundle import save_bundle

    cfg = compose_config(["model=cnn", *overrides])
    classes = ["zero", "one", "two"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(cfg.model, len(classes), cfg.features.n_bins, cfg.features.top_db)
    Path(root).mkdir(parents=True, exist_ok=True)
    return save_bundle(model.eval(), OmegaConf.to_container(cfg.model, resolve=True),
                       OmegaConf.to_container(cfg.features, resolve=True), classes, Path(root) / "model.pt")


def tiny_classifier(root: Path, model_config: dict | None = None):
    """The pyfunc's `AudioClassifier` loaded (as MLflow loads it) around an untrained bundle."""
    from types import SimpleNamespace

    from audiocnn.inference.pyfunc import AudioClassifier

    classifier = AudioClassifier()
    classifier.load_context(SimpleNamespace(artifacts={"model.pt": str(untrained_bundle(root))},
                                            model_config=model_config or {}))
    return classifier


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server started by a test; kill it if it does not exit within `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
