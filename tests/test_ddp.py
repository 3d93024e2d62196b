"""Training in several processes (Lightning DDP, gloo on this CPU): who reads which clips, which
process logs, and one real 2-process training from the train stage's command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from audiocnn.errors import EmptySplitError
from audiocnn.models.bundle import load_bundle
from audiocnn.training import distributed
from audiocnn.experiment import data_module
from tests.conftest import REPO, tiny_config

DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def loaders(cfg, world: int = 2):
    """One data module per process of a `world`-process training (as Lightning attaches its Trainer)."""
    modules = []
    for rank in range(world):
        data = data_module(cfg)
        data.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        modules.append(data)
    return modules


def test_each_process_trains_on_its_own_equal_share_of_one_shuffled_order(prepared_store):
    cfg = OmegaConf.merge(prepared_store, {"trainer": {"batch_size": 4}})
    single = data_module(cfg)
    n = len(single.rows("train"))
    shares = []
    for data in loaders(cfg):
        loader = data.train_dataloader()
        loader.sampler.set_epoch(0)  # what Lightning calls on `dataloader.sampler` each epoch
        shares.append(list(loader.sampler))
        assert len(loader) == (n // 2) // 4  # batches (optimizer steps) per epoch: half of one process's
        x, y = next(iter(loader))  # the sampler's indices reach the dataset's `__getitems__`
        assert x.shape == (4, 1, cfg.features.n_bins, cfg.features.window_frames) and y.shape == (4,)
    assert len(shares[0]) == len(shares[1]) == n // 2
    assert not set(shares[0]) & set(shares[1])  # no clip twice in an epoch
    assert set(shares[0]) | set(shares[1]) <= set(range(n))
    assert len(single.train_dataloader()) == n // 4
    data = loaders(cfg)[0]
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(1)
    assert list(sampler) != shares[0]  # a new order every epoch


def test_validation_gives_every_clip_to_exactly_one_process(prepared_store):
    single = data_module(prepared_store)
    x_all, y_all = [torch.cat(parts) for parts in zip(*single.val_dataloader())]
    pieces = {}
    for rank, data in enumerate(loaders(prepared_store, world=3)):  # 3: unequal shares, no padding
        loader = data.val_dataloader()
        x, y = [torch.cat(parts) for parts in zip(*loader)]
        pieces.update({index: (x[i], y[i]) for i, index in enumerate(loader.sampler)})
    assert sorted(pieces) == list(range(len(y_all)))
    torch.testing.assert_close(torch.stack([pieces[i][0] for i in range(len(y_all))]), x_all)  # the same windows
    assert [int(pieces[i][1]) for i in range(len(y_all))] == y_all.tolist()


def test_fewer_clips_than_processes_is_refused_naming_the_split():
    with pytest.raises(EmptySplitError, match="the val split has 1 clip"):
        distributed.StridedSampler(1, 0, 2)
    with pytest.raises(EmptySplitError, match="the train split has 1 clip"):
        distributed.train_sampler(1, 0, 2, seed=0)


@pytest.mark.parametrize("variables, main", [
    ({}, True), ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),  # Lightning's main process
    ({"LOCAL_RANK": "1"}, False),                                                   # its second process
    ({"RANK": "2", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),                  # torchrun, second node
    ({"SLURM_PROCID": "3"}, False), ({"SLURM_PROCID": "0"}, True),                  # srun
    ({"NODE_RANK": "1"}, False),                                                    # Lightning multi-node
])
def test_only_global_rank_zero_is_the_main_process(monkeypatch, variables, main):
    for variable in distributed.RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    assert distributed.is_main_process() is main


def val_figures(cfg) -> tuple[float, float]:
    """Validation loss and accuracy of `<paths.models>/model.pt` over the whole val split, in one process."""
    model, _ = load_bundle(Path(cfg.paths.models) / "model.pt")
    x, y = [torch.cat(parts) for parts in zip(*data_module(cfg).val_dataloader())]
    with torch.no_grad():
        logits = model(x)
    return float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


@pytest.mark.slow
def test_two_cpu_processes_train_one_run_one_model_with_half_the_steps_each(prepared_store, tmp_path):
    """`python pipelines/train.py --params params.yaml` (the DVC stage's command) with
    trainer.strategy=ddp trainer.devices=2 trainer.accelerator=cpu: Lightning starts a second
    gloo process; one FINISHED MLflow run, one model.pt, run.json, each process half the steps,
    validation figures over every val clip (reduced across the processes)."""
    models = tmp_path / "models"
    cfg = tiny_config(tmp_path, "model=cnn", "trainer.batch_size=4", "tracking.export_onnx=false", *DDP,
                      f"paths.raw={prepared_store.paths.raw}", f"paths.prepared={prepared_store.paths.prepared}",
                      f"paths.features={prepared_store.paths.features}")
    params = tmp_path / "params.yaml"
    params.write_text(OmegaConf.to_yaml(cfg))
    env = {k: v for k, v in os.environ.items()
           if k not in distributed.RANK_VARIABLES and k not in ("WORLD_SIZE", "MLFLOW_TRACKING_URI")}
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--params", str(params)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED", runs
    summary = json.loads((models / "run.json").read_text())
    assert summary["run_id"] == runs["run_id"].iloc[0] and summary["processes"] == 2
    # one process wrote: the model, its run, and resume.json saying the training finished (no last.ckpt left)
    assert sorted(p.name for p in models.iterdir()) == ["best.ckpt", "model.pt", "resume.json", "run.json"]
    assert json.loads((models / "resume.json").read_text())["finished"] is True
    assert not list(tmp_path.glob("**/lightning_logs"))

    n_train = len(data_module(cfg).rows("train"))
    per_process = (n_train // 2) // 4 * cfg.trainer.max_epochs  # one process: n_train // 4 per epoch
    assert summary["train_steps"] == per_process
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("train: process "))
    assert [line.split(":")[1].strip() for line in lines] == ["process 0 of 2", "process 1 of 2"]
    assert all(f": {per_process} optimizer steps" in line for line in lines), lines

    loss, accuracy = val_figures(cfg)  # every val clip, one process: what the reduced figures must be
    assert summary["best_val_loss"] == pytest.approx(loss, abs=1e-4)
    assert summary["best_val_acc"] == pytest.approx(accuracy, abs=1e-6)
    row = runs.iloc[0]
    assert row["metrics.best_val_loss"] == pytest.approx(loss, abs=1e-4)
    assert np.isfinite(row["metrics.val_loss"]) and np.isfinite(row["metrics.train_acc"])
