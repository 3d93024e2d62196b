"""End to end with the real tools: `dvc repro`, `dvc exp run`, MLflow, Hydra entrypoints.

The project is copied to a temporary git repository whose conf/ is shrunk to a tiny
demo (a few clips per class, a few epochs), then driven exactly as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

PROJECT_FILES = ["audiocnn", "conf", "pipelines", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]
TINY_CONF = {
    "data/demo.yaml": {"clips_per_class": 16},
    "features/cqt.yaml": {"num_workers": 0},
    "trainer/default.yaml": {"max_epochs": 10, "batch_size": 16, "log_every_n_steps": 1},
    # 10 epochs of 128 clips check the wiring, too few for the default augmentation to pay off (0.21
    # test accuracy with it): the tiny project keeps the default configs, with no transforms in them
    "augment/combo.yaml": {"transforms": {}},
    "augment/channel.yaml": {"transforms": {}},
    "scheduler/cosine.yaml": {"warmup_epochs": 0},
    "tracking/mlflow.yaml": {"log_model": False},
    "optimizer/adamw.yaml": {"lr": 3.0e-3},
}


def run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if (cwd / "audiocnn").is_dir():  # the copy's package, hence its (shrunk) conf/, not the installed one
        env["PYTHONPATH"] = str(cwd)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def compose_params(project: Path, overrides: tuple[str, ...] = ()) -> None:
    """params.yaml from the project's conf/ and `overrides`, the way DVC's Hydra integration writes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(project / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    (project / "params.yaml").write_text(OmegaConf.to_yaml(cfg))


def copy_project(root: Path, tiny_conf: dict = TINY_CONF) -> Path:
    """The project's files in a new git repository at `root`, conf/ shrunk by `tiny_conf`."""
    for name in PROJECT_FILES:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    for name, changes in tiny_conf.items():
        path = root / "conf" / name
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **changes}, sort_keys=False))
    compose_params(root)
    run(["git", "init", "-q"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", "--allow-empty"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


def mlflow_runs(project: Path):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True)


def test_dvc_repro_runs_every_stage_and_tracks_the_run(project):
    result = run(["dvc", "repro"], project)
    for stage in ("prepare", "featurize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in result.stdout

    assert len(list((project / "data/raw/demo").rglob("*.wav"))) == 16 * 8
    assert (project / "data/prepared/manifest.csv").exists()
    assert list((project / "data/features").glob("demo-*/shard-00000.f16"))
    assert (project / "data/models/model.pt").exists() and (project / "data/models/best.ckpt").exists()
    metrics = json.loads((project / "metrics/test.json").read_text())
    assert set(metrics) >= {"accuracy", "macro_f1", "worst_class"} and "per_class_f1" not in metrics
    per_class = json.loads((project / "metrics/per_class.json").read_text())
    assert len(per_class["per_class_f1"]) == 8
    assert metrics["worst_class"]["recall"] == min(per_class["per_class_recall"].values())
    assert metrics["accuracy"] > 1 / 8 + 0.1, metrics  # clearly above chance for 8 classes
    assert (project / "metrics/predictions.csv").exists() and (project / "metrics/confusion_matrix.png").exists()

    runs = mlflow_runs(project)
    run_id = json.loads((project / "data/models/run.json").read_text())["run_id"]
    row = runs.set_index("run_id").loc[run_id]
    assert row["status"] == "FINISHED"
    assert row["metrics.test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert row["params.model.name"] == "crnn_gru" and row["params.optimizer.lr"] == "0.003"
    assert not pd_isna(row["metrics.val_loss"]) and not pd_isna(row["metrics.train_acc"])
    artifacts = mlflow.MlflowClient().list_artifacts(run_id, "evaluation")
    assert {Path(a.path).name for a in artifacts} >= {"confusion_matrix.png", "test.json"}

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout and "up to date" in again.stdout

    shown = run(["dvc", "metrics", "show"], project).stdout
    assert "metrics/test.json" in shown and "accuracy" in shown and "per_class" not in shown
    assert max(len(line) for line in shown.splitlines()) < 400, shown  # no per-class columns
    summary = run(["audiocnn", "results"], project).stdout  # what `make run` ends with
    lines = summary.splitlines()
    assert lines[0].startswith(f"test accuracy  {metrics['accuracy']:.3f}  (95% CI ")
    assert f"macro-F1       {metrics['macro_f1']:.3f}" in lines and f"ECE            {metrics['ece']:.3f}" in lines
    assert f"worst class    {metrics['worst_class']['name']} " in summary and len(lines) <= 6
    run(["dvc", "plots", "show", "-o", "plots"], project)
    assert (project / "plots/index.html").exists()


def test_dvc_repro_on_multilabel_data_writes_every_declared_output(tmp_path):
    """The evaluate stage's outputs are the same files for either task, so `dvc repro` on a multi-label
    dataset runs to the end, and `dvc plots show` draws its precision-recall curve."""
    project = copy_project(tmp_path / "mix")
    compose_params(project, ("data=demo_mix", "data.clips=48", "trainer.max_epochs=3", "model=cnn"))
    result = run(["dvc", "repro"], project)
    assert "Running stage 'evaluate'" in result.stdout and "test mAP" in result.stdout
    metrics = json.loads((project / "metrics/test.json").read_text())
    assert metrics["task"] == "multilabel" and 0.0 <= metrics["map"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0
    for name in ("confusion_matrix.png", "reliability_diagram.png", "curves/precision_recall.png", "explain/gradcam.png"):
        assert (project / "metrics" / name).stat().st_size > 0, name
    shown = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)
    assert not shown.get("errors"), shown["errors"]
    curve = shown["data"]["metrics/curves/precision_recall.json"][0]["content"]["data"]["values"]
    assert curve and {"recall", "precision"} <= set(curve[0])
    assert "mAP" in run(["audiocnn", "results"], project).stdout


def test_dvc_exp_run_with_hydra_override(project):
    run(["dvc", "repro"], project)  # baseline (no-op when the previous test ran)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)
    result = run(["dvc", "exp", "run", "-S", "model=cnn", "-n", "try-cnn"], project)
    assert "Running stage 'train'" in result.stdout and "Running stage 'prepare'" not in result.stdout
    exps = run(["dvc", "exp", "show", "--json"], project).stdout
    assert "try-cnn" in exps
    table = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout
    assert "try-cnn" in table and "cnn" in table
    runs = mlflow_runs(project)
    assert "cnn" in set(runs["params.model.name"])
    # The MLflow run names the DVC experiment and the commit it started from, so the views join.
    tagged = runs[runs["tags.dvc.exp_name"] == "try-cnn"]
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert list(tagged["params.model.name"]) == ["cnn"]
    assert list(tagged["tags.mlflow.source.git.commit"]) == [commit]
    assert list(tagged["tags.dvc.exp_baseline_rev"]) == [commit]


def test_dvc_queue_runs_experiments_and_plots_diff_compares_them(project):
    """`dvc exp run --queue` + `dvc queue start`: each queued experiment runs in a temporary copy
    of the project, yet logs to the project's MLflow store, tagged with its name and commit."""
    import time

    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()  # the baseline of the previous test
    names = {"q-lr1e-3": "optimizer.lr=1e-3", "q-gru32": "model.hidden_size=32"}
    for name, setting in names.items():
        run(["dvc", "exp", "run", "--queue", "-S", setting, "-n", name], project)
    run(["dvc", "queue", "start", "-j", "1"], project)
    deadline = time.time() + 900
    while True:  # `dvc queue start` returns at once; the worker runs the queue in the background
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.time() < deadline, status
        time.sleep(5)
    assert status.count("Success") >= 2 and "Failed" not in status, status

    table = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout
    header, *rows = table.splitlines()
    assert {"Experiment", "accuracy", "macro_f1", "optimizer.lr", "model.name"} <= set(header.split(","))
    for name in names:
        assert any(row.startswith(f"{name},") for row in rows), table

    run(["dvc", "plots", "diff", *names, "-o", "plots_diff"], project)
    html = (project / "plots_diff/index.html").read_text()
    assert all(name in html for name in names)

    runs = mlflow_runs(project)
    for name in names:
        tagged = runs[runs["tags.dvc.exp_name"] == name]
        assert len(tagged) == 1 and tagged["status"].iloc[0] == "FINISHED", name
        assert tagged["tags.dvc.exp_baseline_rev"].iloc[0] == commit
        assert tagged["tags.mlflow.source.git.commit"].iloc[0] == commit
        assert tagged["metrics.test_accuracy"].notna().all()


def test_hydra_entrypoint_runs_an_experiment_without_dvc(project):
    result = run([sys.executable, "pipelines/train.py", "model=cnn", "trainer.max_epochs=1"], project)
    assert "evaluate: test accuracy" in result.stdout
    outputs = list((project / "data/hydra/runs").glob("*/metrics/test.json"))
    assert outputs, "the Hydra job writes its metrics into its own output folder"
    runs = mlflow_runs(project)
    assert any(name.startswith("cnn-demo-max_epochs=1") for name in runs["tags.mlflow.runName"])


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))
