"""Nothing lost: a killed or crashed training resumes where it stopped, in the same MLflow run, and
no run is left RUNNING by a process that is gone (`audiocnn.training.resume`, `audiocnn.tracking.owners`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from audiocnn import tracking
from audiocnn.evaluation.evaluate import evaluate
from audiocnn.experiment import evaluate_job, job_of
from audiocnn.experiment import run_repeats
from audiocnn.tracking import owners
from audiocnn.training import resume
from tests.conftest import REPO, tiny_config
from tests.pace import Crash

# Deterministic CPU training whose epochs last long enough (Pace) to be killed in the middle of one;
# windows shorter than the clips, so that the random crops (the window generator) matter.
EXACT = ["model=cnn", "features.window_frames=32", "trainer.max_epochs=6", "trainer.deterministic=true",
         "trainer.num_workers=0", "trainer.accelerator=cpu", "seed=0", "tracking.export_onnx=false",
         "+trainer.callbacks.pace._target_=tests.pace.Pace", "+trainer.callbacks.pace.seconds=0.2"]


def config(root: Path, store, name: str, *overrides: str):
    """A tiny config writing models and metrics under `root/name`, reading the shared prepared store."""
    cfg = tiny_config(root, *overrides)
    cfg.paths.prepared, cfg.paths.features, cfg.paths.raw = (store.paths.prepared, store.paths.features,
                                                             store.paths.raw)
    cfg.paths.models, cfg.paths.metrics = str(root / name / "models"), str(root / name / "metrics")
    return cfg


def train_process(cfg, root: Path, name: str) -> subprocess.Popen:
    """`python pipelines/train.py --params <root>/<name>.yaml` (DVC's train stage) in the repository."""
    params = root / f"{name}.yaml"
    OmegaConf.save(cfg, params)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the store is the config's
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # tests/pace.py
    return subprocess.Popen([sys.executable, "pipelines/train.py", "--params", str(params)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """{step: value} of a metric (a step logged twice, killed between the log and the checkpoint, once)."""
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def running(cfg) -> list:
    experiment = MlflowClient(cfg.tracking.uri).get_experiment_by_name(cfg.tracking.experiment)
    return MlflowClient(cfg.tracking.uri).search_runs([experiment.experiment_id],
                                                      filter_string="attributes.status = 'RUNNING'")


@pytest.mark.slow  # about a minute: two trainings and a SIGKILL (make test-slow, CI)
def test_a_training_killed_mid_run_resumes_to_the_same_model_metrics_and_run(tmp_path, prepared_store):
    """SIGKILL after epoch 3 of 6, rerun: the same model.pt tensors, test metrics and per-step
    validation losses as an uninterrupted run, all in the MLflow run the killed process had opened,
    which ends FINISHED; nothing is left RUNNING."""
    whole = config(tmp_path, prepared_store, "whole", *EXACT)
    killed = config(tmp_path, prepared_store, "killed", *EXACT)
    finish(train_process(whole, tmp_path, "whole"))

    process = train_process(killed, tmp_path, "killed")
    last = Path(killed.paths.models) / resume.LAST
    deadline = time.monotonic() + 300
    while not (last.exists() and (resume.checkpoint_epochs(last) or 0) >= 3):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no last.ckpt of epoch 3"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (Path(killed.paths.models) / "model.pt").exists(), "killed after it had finished"
    run_id = json.loads((Path(killed.paths.models) / resume.STATE).read_text())["run_id"]
    client = MlflowClient(killed.tracking.uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # what a kill leaves behind

    output = finish(train_process(killed, tmp_path, "killed"))
    assert f"train: resuming {killed.paths.models} after epoch " in output
    assert f"Restoring states from the checkpoint path at {last}" in output  # Lightning's fit(ckpt_path="last")
    assert "marked KILLED" in output  # the rerun first closed the run the dead process had left
    summary = json.loads((Path(killed.paths.models) / "run.json").read_text())
    reference = json.loads((Path(whole.paths.models) / "run.json").read_text())
    assert summary["run_id"] == run_id and summary["epochs"] == reference["epochs"] == 6
    assert summary["best_val_loss"] == pytest.approx(reference["best_val_loss"], abs=1e-6)

    ours = torch.load(Path(killed.paths.models) / "model.pt", weights_only=True)["state_dict"]
    theirs = torch.load(Path(whole.paths.models) / "model.pt", weights_only=True)["state_dict"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
    metrics, expected = evaluate(evaluate_job(job_of(killed))), evaluate(evaluate_job(job_of(whole)))
    numbers = {k: v for k, v in expected.items() if isinstance(v, float)}
    assert "accuracy" in numbers and {k: metrics[k] for k in numbers} == pytest.approx(numbers, abs=1e-6)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and owners.END_REASON_TAG not in run.data.tags
    for key in ("val_loss", "train_loss"):
        steps, reference_steps = history(client, run_id, key), history(client, reference["run_id"], key)
        assert sorted(steps) == sorted(reference_steps), key
        assert steps == pytest.approx(reference_steps, abs=1e-6), key
    assert not (Path(killed.paths.models) / resume.LAST).exists()  # a finished training is not resumed
    assert running(killed) == []


def crash_when(monkeypatch, rule, *callbacks) -> None:
    """Trainings for which `rule(trainer settings, out)` gives an epoch raise after it (`tests.pace.Crash`);
    `callbacks` are added to every training."""
    import audiocnn.training.train as train_module

    real = train_module.build_trainer

    def build(settings, out, *args, **kwargs):
        trainer, checkpoint = real(settings, out, *args, **kwargs)
        trainer.callbacks.extend(callbacks)
        epoch = rule(settings, Path(out))
        if epoch is not None:
            trainer.callbacks.append(Crash(epoch))
        return trainer, checkpoint

    monkeypatch.setattr(train_module, "build_trainer", build)


class MetricsBeforeCheckpoints(Callback):
    """Whenever last.ckpt is written (in training, not validation: best.ckpt is not resumed from):
    (epochs a resume from it would skip, train_loss points the run has)."""

    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if not trainer.training:
            return
        logger = trainer.logger
        points = MlflowClient(logger._tracking_uri).get_metric_history(logger.run_id, "train_loss")
        self.seen.append((resume.completed_epochs(checkpoint), len(points)))


def test_other_settings_or_resume_false_start_afresh_and_say_why(tmp_path, prepared_store, monkeypatch, capsys):
    """A crash leaves the run FAILED with its reason and a checkpoint; a rerun with trainer.resume=false,
    and one with another learning rate, each start afresh in a new run with one line saying why."""
    from audiocnn.experiment import train_job
    from audiocnn.training.train import train

    base = ["model=cnn", "trainer.max_epochs=3", "tracking.export_onnx=false"]
    cfg = config(tmp_path, prepared_store, "run", *base)
    out = Path(cfg.paths.models)
    crash = {"after": 1}
    crash_when(monkeypatch, lambda settings, out: crash["after"])
    with pytest.raises(RuntimeError, match="crash after epoch 2"):
        train(train_job(job_of(cfg)))
    crashed = json.loads((out / resume.STATE).read_text())["run_id"]
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(crashed).info.status == "FAILED"
    assert client.get_run(crashed).data.tags[owners.END_REASON_TAG] == "RuntimeError: crash after epoch 2"
    assert resume.checkpoint_epochs(out / resume.LAST) == 2

    capsys.readouterr()
    with pytest.raises(RuntimeError):
        train(train_job(job_of(config(tmp_path, prepared_store, "run", *base, "trainer.resume=false"))))
    assert f"train: trainer.resume=false: not resuming {out / resume.LAST} (2 epochs); starting afresh" in \
        capsys.readouterr().out
    second = json.loads((out / resume.STATE).read_text())["run_id"]
    assert second != crashed

    crash["after"] = None
    watch = MetricsBeforeCheckpoints()
    crash_when(monkeypatch, lambda settings, out: None, watch)
    summary = train(train_job(job_of(config(tmp_path, prepared_store, "run", *base, "optimizer.lr=0.002"))))
    # no checkpoint is ahead of the metrics logged: a kill at any moment loses no train_loss point
    assert watch.seen and all(epochs <= points for epochs, points in watch.seen), watch.seen
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train: not resuming")]
    assert said == [f"train: not resuming {out / resume.LAST} (2 epochs): made with other settings "
                    f"(optimizer.lr: {cfg.optimizer.lr} -> 0.002); starting afresh"], said
    assert summary["run_id"] not in (crashed, second) and summary["epochs"] == 3
    assert client.get_run(summary["run_id"]).info.status == "FINISHED"
    assert running(cfg) == []


def test_a_crash_after_fitting_fails_the_run_and_the_rerun_writes_the_model_in_that_run(
        tmp_path, prepared_store, monkeypatch, capsys):
    """The work after fitting is inside the run Lightning's logger owns: a crash writing model.pt leaves
    the run FAILED with the reason and no model.pt; the rerun does not fit again: it validates the best
    checkpoint, writes model.pt and ends the same run FINISHED."""
    from audiocnn.experiment import train_job
    import audiocnn.training.train as train_module

    cfg = config(tmp_path, prepared_store, "after", "model=cnn", "trainer.max_epochs=2", "tracking.export_onnx=false")
    out = Path(cfg.paths.models)

    def no_space(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(train_module, "save_bundle", no_space)
    with pytest.raises(OSError, match="No space left"):
        train_module.train(train_job(job_of(cfg)))
    state = json.loads((out / resume.STATE).read_text())
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(state["run_id"])
    assert state["fit_done"] and state["epochs"] == 2 and not (out / "model.pt").exists()
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILURE_TAG] == "OSError: No space left on device"

    monkeypatch.undo()
    capsys.readouterr()
    summary = train_module.train(train_job(job_of(cfg)))
    assert f"train: resuming MLflow run {state['run_id']}: fitting had ended, writing the model" in capsys.readouterr().out
    assert summary["run_id"] == state["run_id"] and summary["epochs"] == 2 and (out / "model.pt").exists()
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
    assert running(cfg) == []


def test_repeats_skip_finished_variants_and_resume_the_interrupted_one_under_the_same_parent(
        tmp_path, prepared_store, monkeypatch, capsys):
    """trainer.seeds=[0,1] crashing in seed 1: the rerun keeps seed 0's model and run, resumes seed 1
    in its own run and goes on under the parent run repeats.json names."""
    cfg = config(tmp_path, prepared_store, "seeds", "model=cnn", "trainer.seeds=[0,1]", "trainer.max_epochs=2",
                 "tracking.export_onnx=false")
    # seed 1 crashes after its first epoch (not once it has a checkpoint to resume from)
    crash_when(monkeypatch, lambda settings, out: 0 if out.name == "seed-1" and not (out / resume.LAST).exists() else None)
    with pytest.raises(RuntimeError, match="crash after epoch 1"):
        run_repeats(job_of(cfg), steps=("train",), make_inputs=False)
    models = Path(cfg.paths.models)
    parent = json.loads((models / "repeats.json").read_text())["parent_run_id"]
    first = json.loads((models / "seed-0" / "run.json").read_text())["run_id"]
    interrupted = json.loads((models / "seed-1" / resume.STATE).read_text())["run_id"]
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(parent).info.status == "FAILED"

    capsys.readouterr()
    run_repeats(job_of(cfg), steps=("train",), make_inputs=False)
    out = capsys.readouterr().out
    assert f"repeats: resuming MLflow parent run {parent}" in out
    assert f"train: {models / 'seed-0'} already holds this training (MLflow run {first}); not trained again" in out
    assert f"train: resuming {models / 'seed-1'} after epoch 1 of 2 in MLflow run {interrupted}" in out
    assert json.loads((models / "repeats.json").read_text())["parent_run_id"] == parent
    assert json.loads((models / "seed-1" / "run.json").read_text())["run_id"] == interrupted
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(c.info.run_id for c in children) == sorted([first, interrupted])
    assert {c.info.status for c in children} == {"FINISHED"}
    assert client.get_run(parent).info.status == "FINISHED"
    assert running(cfg) == []


OPEN_AND_WAIT = """
import sys, time
from pathlib import Path
from tests.conftest import tiny_config
from audiocnn import tracking
with tracking.open_run(tracking.store_of(tiny_config(Path(sys.argv[1])).tracking), run_name="doomed") as run:
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""


def test_a_killed_process_run_is_marked_killed_and_live_or_foreign_runs_are_not(tmp_path):
    """A run whose process was SIGKILLed stays RUNNING until the next `tracking.configure`, which marks
    it KILLED with the reason; so is a run whose pid now belongs to a later process. A run of this live
    process, and one owned by another host, stay RUNNING."""
    cfg = tiny_config(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", OPEN_AND_WAIT, str(tmp_path)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    doomed = process.stdout.readline().strip()
    assert doomed, process.stderr.read()[-3000:]
    client = MlflowClient(cfg.tracking.uri)
    tags = client.get_run(doomed).data.tags
    assert tags[owners.PID_TAG] == str(process.pid) and tags[owners.HOST_TAG] == owners.owner_tags()[owners.HOST_TAG]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert client.get_run(doomed).info.status == "RUNNING"

    alive = tracking.start_parent_run(tracking.store_of(cfg.tracking), "alive")  # owned by this (live) process
    experiment = client.get_run(alive).info.experiment_id
    mine = owners.owner_tags()
    reused = client.create_run(experiment, run_name="reused-pid", tags={**mine, owners.START_TAG: "1000.00"})
    foreign = client.create_run(experiment, run_name="elsewhere", tags={
        **mine, owners.HOST_TAG: "another-host.example", owners.PID_TAG: str(process.pid)})

    tracking.configure(tracking.store_of(cfg.tracking))
    killed = client.get_run(doomed)
    assert killed.info.status == "KILLED"
    assert f"pid {process.pid} on {mine[owners.HOST_TAG]}" in killed.data.tags[owners.END_REASON_TAG]
    assert client.get_run(reused.info.run_id).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(foreign.info.run_id).info.status == "RUNNING"
    for run_id in (alive, foreign.info.run_id):
        client.set_terminated(run_id)


def test_a_sweep_rerun_into_its_folder_reopens_its_parent_run(tmp_path, monkeypatch):
    """`SweepParentRun` records its parent in `<hydra.sweep.dir>/sweep.json`; the same sweep started
    again into that folder goes on under it (RUNNING again, owned by the new process)."""
    import atexit

    from audiocnn.sweep import SweepParentRun
    from tests.test_sweep_table import sweep_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # read as the sweep's process starts
    config = sweep_config(tmp_path, ["optimizer.lr=0.1,0.01"])
    first, second = SweepParentRun(), SweepParentRun()
    try:
        first.on_multirun_start(config)
        parent = first.run_id
        assert json.loads((tmp_path / "multirun" / "sweep.json").read_text())["parent_run_id"] == parent
        client = MlflowClient(tracking.anchored(config.tracking.uri))
        client.set_terminated(parent, "KILLED")  # as `tracking.configure` leaves a dead sweep's parent
        second.on_multirun_start(config)
        assert second.run_id == parent
        assert client.get_run(parent).info.status == "RUNNING"
        assert client.get_run(parent).data.tags[owners.PID_TAG] == str(os.getpid())
        second.on_multirun_end(config)
    finally:
        atexit.unregister(first._end)
        atexit.unregister(second._end)
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_checkpoint_write_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """`AtomicCheckpointIO` writes beside the checkpoint and renames: a write that dies half-way
    leaves the old last.ckpt readable and no partial file under its name."""
    io = resume.AtomicCheckpointIO()
    path = tmp_path / resume.LAST
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def dies_half_way(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert resume.checkpoint_epochs(path) == 2  # epoch 1 (0-based) is complete: 2 epochs
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [resume.LAST]
