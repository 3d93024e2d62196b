"""Repeated experiments under one MLflow parent run: folds (`data.protocol=cv`) and seeds (`trainer.seeds`).

The parts of a repeated experiment; `audiocnn.experiment.run_repeats` runs them. Each variant (fold x seed) is an ordinary experiment with `data.fold` and `seed` set, and
its own manifest (`<paths.models>/prepared/<label>`), model (`<paths.models>/<label>`) and
metrics (`<paths.metrics>/<label>`); the feature store is shared. The variants' MLflow runs
are children of one parent run, which gets the mean, std and min of every test metric;
`<paths.metrics>/test.json` holds that aggregate (what `dvc metrics show` reads) and
`<paths.metrics>/predictions.csv` every variant's test predictions. A rerun with the same
settings goes on under the same parent run and skips the variants whose training had
finished (`audiocnn.training.resume.finished`); the one a kill interrupted resumes.
A fold's name comes from the data, so its folder and key part is its slug (`fold-<slug>`,
`audiocnn.data.names.slug_map`): a fold `/../../x` names `fold-x`, never a path outside
`paths.*`. repeats.json records the mapping (`names.folds`) next to each variant's original fold.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf

from audiocnn import atomic, tracking
from audiocnn.data.names import slug_map, unescape_columns
from audiocnn.data.prepare import fold_values, read_classes, read_manifest
from audiocnn.data.task import EVENTS, MULTILABEL, is_multilabel
from audiocnn.errors import ConfigError
from audiocnn.evaluation.event_report import EVENTS_DIR
from audiocnn.evaluation.reports import CURVES, write_pooled_reports
from audiocnn.training import resume

REPEAT_KEYS = ("data.fold", "seed")  # the overrides a sweep repeats an experiment over (`sweep_groups`)
STATE_FILE = "repeats.json"  # in paths.models: the parent run and the variants, for the evaluate stage
TEST_SCORES = ("accuracy", "map", "event_macro_f1")  # a run's test score, by task (the first it has)


@dataclass(frozen=True)
class Variant:
    label: str         # "fold-george", "seed-1", "fold-3-seed-1": safe as a folder name and a metric key
    fold: str | None   # the fold as the data names it
    seed: int


def is_repeated(cfg: DictConfig) -> bool:
    return cfg.data.get("protocol", "holdout") == "cv" or bool(cfg.trainer.get("seeds"))


def variants(cfg: DictConfig) -> list[Variant]:
    """Every fold (when `data.protocol=cv`, read from the prepared manifest) times every seed of
    `trainer.seeds` (else `seed`)."""
    if is_multilabel(read_classes(cfg.paths.prepared)[1]):  # multi-label and event data
        setting = "data.protocol=cv" if cfg.data.get("protocol") == "cv" else f"trainer.seeds={list(cfg.trainer.seeds)}"
        raise ConfigError(f"{setting}: repeats are not yet for multi-label data (data={cfg.data.name}); "
                          "train one seed at a time (seed=N)")
    if cfg.data.get("protocol", "holdout") == "cv":
        folds = fold_values(read_manifest(cfg.paths.prepared))
        if not folds:
            raise ConfigError(f"data.protocol=cv: data={cfg.data.name} has no folds; use trainer.seeds instead")
    else:
        folds = [None if cfg.data.get("fold") is None else str(cfg.data.fold)]
    seeds = [int(s) for s in cfg.trainer.seeds] if cfg.trainer.get("seeds") else [int(cfg.seed)]
    return labelled([(fold, seed) for fold in folds for seed in seeds])


def labelled(pairs: list[tuple]) -> list[Variant]:
    """The variants of these (fold, seed) pairs, labelled by what varies among them: `fold-<slug>`, `seed-<n>`."""
    folds, seeds = list(dict.fromkeys(fold for fold, _ in pairs)), {seed for _, seed in pairs}
    slugs = fold_slugs(folds)
    return [Variant("-".join(([f"fold-{slugs[fold]}"] if len(folds) > 1 else []) +
                             ([f"seed-{seed}"] if len(seeds) > 1 else [])), fold, seed) for fold, seed in pairs]


def fold_slugs(folds: list) -> dict:
    """{fold: slug} of the non-null `folds` (`audiocnn.data.names.slug_map`)."""
    return slug_map([f for f in folds if f is not None], "fold")


def variant_config(cfg: DictConfig, variant: Variant) -> DictConfig:
    """`cfg` as a single experiment on one fold and seed, with its own output folders."""
    single = copy.deepcopy(cfg)
    single.data.fold = variant.fold
    single.data.protocol = "holdout"
    single.trainer.seeds = None
    single.seed = variant.seed
    single.paths.models = f"{cfg.paths.models}/{variant.label}"
    single.paths.prepared = f"{cfg.paths.models}/prepared/{variant.label}"
    single.paths.metrics = f"{cfg.paths.metrics}/{variant.label}"
    return single


def parent_run_name(cfg: DictConfig, suffix: str = "") -> str:
    """`<model>-<data>[-<what the overrides change>]-cv` (or `-seeds`; `tracking.default_run_name`)."""
    return run_name_of(cfg, suffix, "cv" if cfg.data.get("protocol") == "cv" else "seeds")


def variant_run_name(cfg: DictConfig, variant: Variant, suffix: str = "") -> str:
    """A variant's run name: its parent's without the `-cv`, then its label (`...-fold-3-seed-1`)."""
    return run_name_of(cfg, suffix, variant.label)


def run_name_of(cfg: DictConfig, suffix: str = "", kind: str = "") -> str:
    """`tracking.default_run_name` of `cfg`: `tracking.run_name`, else `<model>-<data>[-suffix][-kind]`."""
    return tracking.default_run_name(cfg.tracking.get("run_name"), cfg.model.name, cfg.data.name, suffix, kind)


def start(cfg: DictConfig, todo: list[Variant], store: tracking.Store, run_name_suffix: str = "") -> str:
    """The parent run of `todo` in `store`, recorded with them in `<paths.models>/repeats.json`; returns its id.

    The parent `repeats.json` already names for these settings, variants and code is reopened (a
    rerun after a kill goes on under it), unless `trainer.resume=false`; else a new one is opened."""
    out, config = Path(cfg.paths.models), OmegaConf.to_container(cfg, resolve=True)
    made_from = {"fingerprint": resume.fingerprint(config), "code": resume.code_digest()}
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    same = {k: state.get(k) for k in made_from} == made_from and state.get("variants") == [asdict(v) for v in todo]
    if cfg.trainer.get("resume", True) and same and tracking.reopen_run(store, state["parent_run_id"]):
        print(f"repeats: resuming MLflow parent run {state['parent_run_id']}")
        return state["parent_run_id"]
    tags = {**tracking.run_tags(cfg.data.name, cfg.model.name, cfg.paths.prepared),
            "audiocnn.repeats": ",".join(v.label for v in todo)}
    parent = tracking.start_parent_run(store, parent_run_name(cfg, run_name_suffix), tags,
                                       params=tracking.flatten_config(config))
    tracking.log_dataset(cfg.paths.prepared, cfg.data.name, parent)
    names = {"folds": fold_slugs(list(dict.fromkeys(v.fold for v in todo)))}
    atomic.write_json(out / STATE_FILE, {"parent_run_id": parent, "variants": [asdict(v) for v in todo],
                                         "names": names, **made_from})
    return parent


def resume_parent(cfg: DictConfig) -> tuple[str, list[Variant]]:
    """(parent run id, variants) written by `start` (the evaluate stage picks them up here)."""
    state = json.loads((Path(cfg.paths.models) / STATE_FILE).read_text())
    return state["parent_run_id"], [Variant(**v) for v in state["variants"]]


@dataclass(frozen=True)
class Finished:
    """A finished run of a repeated experiment: a variant of `run_repeats`, or a job of a sweep over
    `data.fold` / `seed` (`sweep_groups`)."""
    label: str     # "seed-1", "fold-x-seed-1": a folder name and a metric key
    metrics: dict  # its test metrics (test.json) and `best_val_acc`
    folder: Path    # its metrics folder: test.json, predictions.csv, explain/, curves/, events/
    prepared: Path  # its manifest's folder (classes.json)


def validation_score(summary: dict) -> float:
    """What a sweep maximises: a training's best validation accuracy, mAP on multi-label data, or frame F1
    (macro, at 0.5) on event data."""
    task = summary.get("task")
    return (summary["best_val_frame_f1"] if task == EVENTS else summary["best_val_map"] if task == MULTILABEL
            else summary["best_val_acc"])


def aggregate_metrics(results: list[Finished]) -> dict:
    """Mean, std (ddof=1) and min over runs of every float metric they all have, plus each run's."""
    first = results[0].metrics
    keys = [k for k, v in first.items() if isinstance(v, float) and all(isinstance(r.metrics.get(k), float)
                                                                         for r in results)]
    aggregate: dict = {"n_runs": len(results)}
    for key in keys:
        values = np.array([r.metrics[key] for r in results])
        aggregate[key] = float(values.mean())
        aggregate[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        aggregate[f"{key}_min"] = float(values.min())
    aggregate["runs"] = {r.label: {k: r.metrics[k] for k in keys} for r in results}
    return aggregate


def write_aggregate(results: list[Finished], out: Path, title: str, calibration_bins: int) -> dict:
    """Into `out`: `test.json` (the aggregate); on single-label data also the pooled reports of
    `evaluation.reports.write_pooled_reports` (`per_class.json`, `predictions.csv`, the PNGs: all runs
    pooled; test.json's `worst_class` is theirs), not yet on multi-label and event data, whose pooled reports
    would need each run's probabilities; `explain/<label>/`, `curves/<label>/`, `events/<label>/` (each run's)."""
    aggregate = aggregate_metrics(results)
    classes, task = read_classes(results[0].prepared)
    if not is_multilabel(task):
        pooled = pd.concat([unescape_columns(pd.read_csv(r.folder / "predictions.csv", keep_default_na=False, dtype={
            "path": str, "actual": str, "predicted": str})).assign(run=r.label) for r in results], ignore_index=True)
        accuracy = f"{aggregate['accuracy']:.3f} +/- {aggregate['accuracy_std']:.3f}"
        aggregate["worst_class"] = write_pooled_reports(pooled, classes, out, f"{title}, {len(results)} runs pooled",
                                                        accuracy, calibration_bins)["worst_class"]
    atomic.write_json(out / "test.json", aggregate)
    for folder in ("explain", CURVES, EVENTS_DIR):  # each run's files side by side under the DVC output folders
        (out / folder).mkdir(parents=True, exist_ok=True)
        for result in results:
            if (result.folder / folder).is_dir():
                shutil.copytree(result.folder / folder, out / folder / result.label, dirs_exist_ok=True)
    score = next((key for key in TEST_SCORES if key in aggregate), None)
    if score:
        print("repeats:\n" + "\n".join(f"  {label:<24} {score} {m[score]:.4f}"
                                        for label, m in aggregate["runs"].items()))
        print(f"repeats: test {score} {aggregate[score]:.4f} +/- {aggregate[score + '_std']:.4f} "
              f"(min {aggregate[score + '_min']:.4f}) over {len(results)} runs -> {out / 'test.json'}")
    return aggregate


def log_aggregate(client: MlflowClient, run_id: str, out: Path, aggregate: dict, prefix: str = "",
                  artifact_path: str = "evaluation") -> None:
    """`aggregate`'s metrics (`<prefix>test_<key>`, each run's as `<prefix>test_<key>.<label>`) and `out`'s
    reports into the run `run_id`."""
    metrics = {f"{prefix}test_{k}": v for k, v in aggregate.items() if isinstance(v, float)}
    metrics.update({f"{prefix}test_{k}.{label}": v for label, m in aggregate["runs"].items() for k, v in m.items()})
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])  # MLflow splits it
    for name in ("test.json", "per_class.json", "predictions.csv", "confusion_matrix.png", "reliability_diagram.png"):
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name), artifact_path=artifact_path)


def parse_overrides(overrides: list[str]) -> dict:
    """{dotted key or group: Hydra's parsed override} of a job's command-line overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.key_or_group: o for o in OverridesParser.create().parse_overrides(overrides)}


def job_prepared(job_dir: Path, overrides: list[str], shared: Path) -> Path:
    """The manifest folder of a sweep job: its own (`<job_dir>/prepared`) when its overrides set `seed` or
    anything of `data` (its split differs from other jobs', which a shared folder would rewrite under
    them, side by side under a parallel launcher); else the sweep's `paths.prepared` (`shared`)."""
    keys = parse_overrides(overrides)
    return job_dir / "prepared" if any(k in ("seed", "data") or k.startswith("data.") for k in keys) else shared


def sweep_groups(sweep_dir: Path, shared: Path, run_ids: set[str]) -> dict[str, list[Finished]]:
    """The finished jobs of a Hydra sweep over `data.fold` and/or `seed` (`-m data.fold=0,1,2 seed=0,1`),
    grouped by the other overrides that vary among its jobs (`model=cnn`; "" when none do). Groups of
    two runs or more; {} when the sweep varies neither. A job's outputs are Hydra's `.hydra/overrides.yaml`
    and `audiocnn.experiment.run_experiment`'s `model/run.json` and `metrics/test.json` in its folder; only
    jobs whose training run is one of `run_ids` (the sweep's child runs: not the folders an earlier sweep
    into the same `hydra.sweep.dir` left) and that were evaluated count. `shared`: the sweep's `paths.prepared`."""
    jobs = []  # (folder, overrides, run.json)
    for file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        folder = file.parent.parent
        try:
            summary = json.loads((folder / "model" / "run.json").read_text())
        except (OSError, ValueError):  # failed before its model, or repeats of its own
            continue
        if summary.get("run_id") in run_ids and (folder / "metrics" / "test.json").is_file():
            jobs.append((folder, yaml.safe_load(file.read_text()) or [], summary))
    parsed = [parse_overrides(overrides) for _, overrides, _ in jobs]
    varying = {key for key in set().union(*parsed) if len({p[key].input_line if key in p else None
                                                              for p in parsed}) > 1}
    if not varying & set(REPEAT_KEYS):
        return {}
    members: dict[str, list] = {}
    for job, keys in zip(jobs, parsed):
        setting = " ".join(keys[k].input_line for k in sorted(varying - set(REPEAT_KEYS)) if k in keys)
        fold, seed = (str(keys[k].value()) if k in keys else None for k in REPEAT_KEYS)
        members.setdefault(setting, []).append((job, fold, seed))
    groups = {}
    for setting, finished in members.items():
        runs: dict[str, Finished] = {}
        for variant, ((folder, overrides, summary), _, _) in zip(labelled([pair for _, *pair in finished]), finished):
            metrics = {**json.loads((folder / "metrics" / "test.json").read_text()),
                       "best_val_acc": validation_score(summary)}
            runs.setdefault(variant.label, Finished(variant.label, metrics, folder / "metrics",  # `seed=0,0`: once
                                                    job_prepared(folder, overrides, shared)))
        if len(runs) > 1:
            groups[setting] = list(runs.values())
    return groups
