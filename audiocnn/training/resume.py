"""Resuming a killed train stage: `last.ckpt`, `resume.json`, and what a rerun does with them.

At the end of every epoch the train stage replaces `<paths.models>/last.ckpt` (Lightning's
`ModelCheckpoint(save_on_train_epoch_end=True)`), after the epoch's train metrics are in the
MLflow run (`TrainMetricsFirst`: Lightning itself logs them only after every `on_train_epoch_end`
hook, so a kill between the checkpoint and its log would lose that epoch's point for good; the
point is then logged twice, at the same step with the same value). The write is atomic
(`AtomicCheckpointIO`: temporary file in the same folder, then `os.replace`; Lightning's own goes
through the system temp folder). It holds what Lightning keeps (weights, optimizer, scheduler,
epoch and step counters, the callbacks' state: early stopping, the best checkpoint) plus what it
does not: the random number generators (`RngState`) and the training windows' generator
(`WindowDataModule.state_dict`); `trainer.fit(ckpt_path="last")` resumes from it (Lightning finds it
through the `ModelCheckpoint` that writes it).
`resume.json` beside it says what the checkpoint was made from: the fingerprint of the settings
(the resolved config without `paths`, `tracking`, `evaluate`, `serving`, `ensemble` and
`trainer.resume`, plus the manifest's md5) and the MLflow run. The DDP processes Lightning starts
follow the main one's plan through these two files (`follow`).

A rerun in the same `paths.models` (`plan`) resumes from it, in the same MLflow run, when the
fingerprint is the same; other settings, another manifest, a run missing from the store or
`trainer.resume=false` start afresh, and say why in one line. A finished training starts
afresh too (DVC reruns the stage only when something changed); orchestration skips a
finished training instead (`finished`: `run.json` and `model.pt` of the same fingerprint and
the same code, `code_digest`). The resumed training is the uninterrupted one exactly with
`trainer.deterministic=true` and `trainer.num_workers=0`; with workers, the windows after a
resume are drawn by new worker processes (the same distribution, not the same draws). The
code is not part of the fingerprint: a training resumes after a fix to the code that crashed it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import mlflow
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

import audiocnn
from audiocnn import atomic, tracking
from audiocnn.errors import InputError
from audiocnn.tracking import owners

LAST, BEST, STATE = "last.ckpt", "best.ckpt", "resume.json"
NOT_TRAINING = ("paths", "tracking", "evaluate", "serving", "ensemble", "hydra")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name in their folder, then renamed over the old one: a
    kill mid-write leaves the previous checkpoint whole (Lightning's own write goes through a
    temporary file in the system temp folder, copied across when that is another file system)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class TrainMetricsFirst(Callback):
    """Log the epoch's train metrics (`train_*`, reduced over the epoch) when the epoch ends, before
    any checkpoint of it is written; at the step Lightning logs them at (one optimizer: its last step)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.logger is not None:
            trainer.logger.log_metrics({k: float(v) for k, v in trainer.callback_metrics.items()
                                        if k.startswith("train_")}, step=trainer.global_step - 1)


class RngState(Callback):
    """Python's, numpy's and torch's (CPU and CUDA) generators in every checkpoint, restored with it."""

    def state_dict(self) -> dict:
        version, state, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"python": [version, list(state), gauss], "numpy": [kind, torch.from_numpy(keys.copy()), pos,
                                                                  has_gauss, cached],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        version, values, gauss = state["python"]
        random.setstate((version, tuple(values), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def settings(config: Mapping) -> dict[str, str]:
    """The settings training depends on, as {dotted key: JSON value}, of a resolved config as plain Python
    (`OmegaConf.to_container(cfg, resolve=True)`), and the md5 of the manifest in its `paths.prepared`."""
    flat: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = json.dumps(node, sort_keys=True)

    walk({k: v for k, v in config.items() if k not in NOT_TRAINING}, "")
    flat.pop("trainer.resume", None)
    manifest = Path(config["paths"]["prepared"]) / "manifest.csv"
    if manifest.exists():
        with open(manifest, "rb") as handle:
            flat["manifest.md5"] = json.dumps(hashlib.file_digest(handle, "md5").hexdigest())
    return flat


def fingerprint(config: Mapping) -> str:
    return hashlib.sha256(json.dumps(settings(config), sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def code_digest() -> str:
    """The audiocnn package's source (what a finished model was made with)."""
    digest = hashlib.sha256()
    root = Path(audiocnn.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def changes(old: dict, new: dict, limit: int = 3) -> str:
    """`optimizer.lr: 0.001 -> 0.002; +1 more` (keys that differ)."""
    keys = sorted(set(old) | set(new), key=lambda k: (k == "manifest.md5", k))
    differ = [k for k in keys if old.get(k) != new.get(k)]
    shown = [f"{k}: {old.get(k, 'unset')} -> {new.get(k, 'unset')}" for k in differ[:limit]]
    return "; ".join(shown) + (f"; +{len(differ) - limit} more" if len(differ) > limit else "")


@dataclass(frozen=True)
class Start:
    """How the train stage starts: `run_id` (None: a new run), `from_last` (fit from `last.ckpt`,
    `trainer.fit(ckpt_path="last")`; else from epoch 0), `fit_done` (fit had ended: only the bundle is
    left to write), `message` (printed when not empty)."""
    run_id: str | None = None
    from_last: bool = False
    fit_done: bool = False
    epochs: int = 0
    message: str = ""


def read_state(out: Path) -> dict | None:
    try:
        return json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return None


def completed_epochs(checkpoint: dict) -> int:
    """The epochs a resume from this Lightning checkpoint skips (written at the end of epoch `epoch`)."""
    return int(checkpoint["epoch"]) + 1


def checkpoint_epochs(path: Path) -> int | None:
    """`completed_epochs` of the checkpoint file at `path` (None if unreadable)."""
    try:
        return completed_epochs(torch.load(path, map_location="cpu", mmap=True, weights_only=True))
    except Exception:  # noqa: BLE001 - a checkpoint we cannot read is one we cannot resume from
        return None


def _fresh(out: Path, message: str = "") -> Start:
    """Start afresh: the old checkpoints go first, so that a kill now cannot resume from them."""
    for name in (LAST, STATE):
        (out / name).unlink(missing_ok=True)
    for stale in out.glob(".*.ckpt.tmp-*"):  # a write a kill interrupted
        stale.unlink(missing_ok=True)
    return Start(message=f"{message}; starting afresh" if message else "")


def plan(config: Mapping, out: Path, store: tracking.Store) -> Start:
    """What a train stage in `out` resumes from (see the module docstring). Raises `InputError`
    when the run it would resume is RUNNING in a live process of this machine (two trainings in
    one folder); one RUNNING on another host cannot be judged from here and is resumed. `store`: the
    MLflow store the run is in."""
    state, last = read_state(out), out / LAST
    epochs = checkpoint_epochs(last) if last.exists() else None
    where = f"{last}" + (f" ({epochs} epochs)" if epochs else "")
    if not config["trainer"].get("resume", True):
        return _fresh(out, f"trainer.resume=false: not resuming {where}" if last.exists() else "")
    if state is None or state.get("finished"):
        return _fresh(out, f"not resuming {where}: no {STATE} says what it was made from"
                      if last.exists() and state is None else "")
    if fingerprint(config) != state.get("fingerprint"):
        return _fresh(out, f"not resuming {where}: made with other settings "
                           f"({changes(state.get('settings', {}), settings(config))})")
    tracking.configure(store)  # marks the run KILLED if its process is gone
    try:
        run = mlflow.MlflowClient().get_run(state["run_id"])
    except mlflow.exceptions.MlflowException:
        return _fresh(out, f"not resuming {where}: its MLflow run {state['run_id']} is not in "
                           f"{tracking.redact(store.uri)}")
    tags = run.data.tags
    if run.info.status == "RUNNING" and owners.on_this_machine(tags) and owners.owner_alive(tags):
        raise InputError(f"paths.models={out}: MLflow run {run.info.run_id} is being trained there by "
                         f"{owners.describe(tags)}; wait for it to end, stop it, or use another paths.models")
    if state.get("fit_done") and (out / BEST).exists():
        return Start(run.info.run_id, fit_done=True, epochs=int(state.get("epochs", 0)),
                     message=f"resuming MLflow run {run.info.run_id}: fitting had ended, writing the model")
    done = (f"after epoch {epochs} of {config['trainer']['max_epochs']}" if epochs
            else "from epoch 0 (no checkpoint yet)")
    return Start(run.info.run_id, from_last=bool(epochs),
                 message=f"resuming {out} {done} in MLflow run {run.info.run_id}")


def follow(out: Path) -> Start:
    """A DDP process other than the main one starts as the main one planned (`plan`, which ran before
    Lightning started this process, and left `last.ckpt` only when it resumes from it): no fit
    when `resume.json` says fitting had ended, else from `last.ckpt` when there is one."""
    state, last = read_state(out) or {}, out / LAST
    if state.get("fit_done") and not state.get("finished") and (out / BEST).exists():
        return Start(fit_done=True, epochs=int(state.get("epochs", 0)))
    return Start(from_last=last.exists())


def record(config: Mapping, out: Path, run_id: str, **extra) -> None:
    """Write `resume.json`: the fingerprint, the settings and the run (atomically)."""
    state = {"fingerprint": fingerprint(config), "run_id": run_id, **extra, "settings": settings(config)}
    atomic.write_json(out / STATE, state)


def finish(config: Mapping, out: Path, run_id: str) -> None:
    """The stage ended: `resume.json` says so and `last.ckpt` goes (a finished run is not resumed)."""
    record(config, out, run_id, finished=True)
    (out / LAST).unlink(missing_ok=True)


def finished(config: Mapping) -> dict | None:
    """`run.json` when `paths.models` holds a finished training of these settings (a resolved config as
    plain Python) and this code (its `model.pt` too); None otherwise, or with `trainer.resume=false`."""
    out = Path(config["paths"]["models"])
    if not config["trainer"].get("resume", True) or not (out / "model.pt").exists():
        return None
    try:
        summary = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    same = summary.get("fingerprint") == fingerprint(config) and summary.get("code") == code_digest()
    return summary if same else None
