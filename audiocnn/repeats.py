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
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from audiocnn import atomic, tracking
from audiocnn.data.names import slug_map, unescape_columns
from audiocnn.data.prepare import fold_values, read_classes, read_manifest
from audiocnn.data.task import is_multilabel
from audiocnn.errors import ConfigError
from audiocnn.evaluation.event_report import EVENTS_DIR
from audiocnn.evaluation.reports import CURVES, write_pooled_reports
from audiocnn.training import resume

STATE_FILE = "repeats.json"  # in paths.models: the parent run and the variants, for the evaluate stage


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
    slugs = fold_slugs(folds)
    result = []
    for fold in folds:
        for seed in seeds:
            parts = ([f"fold-{slugs[fold]}"] if len(folds) > 1 else []) + ([f"seed-{seed}"] if len(seeds) > 1 else [])
            result.append(Variant("-".join(parts), fold, seed))
    return result


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


def aggregate_metrics(results: list[dict]) -> dict:
    """Mean, std (ddof=1) and min over variants of every float metric they all have, plus each variant's."""
    keys = [k for k, v in results[0].items() if isinstance(v, float) and all(isinstance(r.get(k), float) for r in results)]
    aggregate: dict = {"n_runs": len(results)}
    for key in keys:
        values = np.array([r[key] for r in results])
        aggregate[key] = float(values.mean())
        aggregate[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        aggregate[f"{key}_min"] = float(values.min())
    aggregate["runs"] = {r["variant"].label: {k: r[k] for k in keys} for r in results}
    return aggregate


def write_aggregate(cfg: DictConfig, results: list[dict], calibration_bins: int) -> dict:
    """`test.json` (aggregate, with the worst class of the pooled predictions); the pooled reports of
    `evaluation.reports.write_pooled_reports` (`per_class.json`, `predictions.csv`, the PNGs: all
    variants pooled); `explain/<label>/` (each variant's explanations)."""
    out = Path(cfg.paths.metrics)
    aggregate = aggregate_metrics(results)
    frames = []
    for result in results:
        single = variant_config(cfg, result["variant"])
        frame = pd.read_csv(Path(single.paths.metrics) / "predictions.csv",
                            dtype={"path": str, "actual": str, "predicted": str}, keep_default_na=False)
        frames.append(unescape_columns(frame).assign(run=result["variant"].label))
    classes = json.loads((Path(variant_config(cfg, results[0]["variant"]).paths.prepared) / "classes.json").read_text())
    pooled = write_pooled_reports(pd.concat(frames, ignore_index=True), classes, out,
                                  f"{cfg.model.name} on {cfg.data.name}, {len(results)} runs pooled",
                                  f"{aggregate['accuracy']:.3f} +/- {aggregate['accuracy_std']:.3f}",
                                  calibration_bins)
    aggregate["worst_class"] = pooled["worst_class"]
    atomic.write_json(out / "test.json", aggregate)
    for folder in ("explain", CURVES, EVENTS_DIR):  # each run's files side by side under the DVC output folders
        (out / folder).mkdir(parents=True, exist_ok=True)
        for result in results:
            written = Path(variant_config(cfg, result["variant"]).paths.metrics) / folder
            if written.is_dir():
                shutil.copytree(written, out / folder / result["variant"].label, dirs_exist_ok=True)
    print("repeats:\n" + "\n".join(
        f"  {label:<24} accuracy {m['accuracy']:.4f}  macro-F1 {m.get('macro_f1', float('nan')):.4f}"
        for label, m in aggregate["runs"].items()))
    print(f"repeats: test accuracy {aggregate['accuracy']:.4f} +/- {aggregate['accuracy_std']:.4f} "
          f"(min {aggregate['accuracy_min']:.4f}) over {len(results)} runs -> {out / 'test.json'}")
    return aggregate


def log_aggregate(cfg: DictConfig, store: tracking.Store, parent: str, aggregate: dict) -> None:
    with tracking.open_run(store, run_id=parent):
        mlflow.log_metrics({f"test_{k}": v for k, v in aggregate.items() if isinstance(v, float)})
        for label, metrics in aggregate["runs"].items():
            mlflow.log_metrics({f"test_{k}.{label}": v for k, v in metrics.items()})
        for name in ("test.json", "per_class.json", "predictions.csv", "confusion_matrix.png", "reliability_diagram.png"):
            mlflow.log_artifact(str(Path(cfg.paths.metrics) / name), artifact_path="evaluation")
