"""DVC remotes: the pipeline's outputs pushed to a remote (here a local folder) and pulled into a
fresh clone of the repository reproduce nothing and show the same metrics (docs/scaling-out.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_e2e import TINY_CONF, copy_project, run

pytestmark = pytest.mark.slow

OUTPUTS = ["data/raw", "data/prepared", "data/features", "data/models"]  # DVC-cached outputs (dvc.yaml)
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def test_outputs_pushed_to_a_remote_and_pulled_into_a_fresh_clone_reproduce_nothing(tmp_path):
    project = copy_project(tmp_path / "project", {
        **TINY_CONF, "data/demo.yaml": {"clips_per_class": 6},
        "trainer/default.yaml": {**TINY_CONF["trainer/default.yaml"], "max_epochs": 2},
        "tracking/mlflow.yaml": {"log_model": False, "export_onnx": False}})
    shutil.copy(REPO / ".dvc/.gitignore", project / ".dvc/.gitignore")  # the cache stays out of git
    run(["dvc", "repro"], project)
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], project)
    run(["dvc", "push"], project)
    assert "in sync" in run(["dvc", "status", "--cloud"], project).stdout
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-qm", "pipeline run, remote"], project)
    shown = run(["dvc", "metrics", "show"], project).stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not any((clone / out).exists() for out in OUTPUTS)  # git holds none of the data
    assert not (clone / ".dvc/cache").exists()  # nor of DVC's cache: everything below comes from the remote
    pulled = run(["dvc", "pull"], clone).stdout
    assert all((clone / out).exists() for out in OUTPUTS), pulled
    for name in ("model.pt", "run.json", "best.ckpt"):
        assert (clone / "data/models" / name).read_bytes() == (project / "data/models" / name).read_bytes()

    again = run(["dvc", "repro"], clone)
    assert "Running stage" not in again.stdout and "up to date" in again.stdout, again.stdout
    assert "up to date" in run(["dvc", "status"], clone).stdout
    assert run(["dvc", "metrics", "show"], clone).stdout == shown
    assert "accuracy" in shown
