"""Repeated experiments under one MLflow parent run: folds (`data.protocol=cv`) and seeds (`trainer.seeds`).

Each variant (fold x seed) is an ordinary experiment with `data.fold` and `seed` set, and
its own manifest (`<paths.models>/prepared/<label>`), model (`<paths.models>/<label>`) and
metrics (`<paths.metrics>/<label>`); the feature store is shared. The variants' MLflow runs
are children of one parent run, which gets the mean, std and min of every test metric;
`<paths.metrics>/test.json` holds that aggregate (what `dvc metrics show` reads) and
`<paths.metrics>/predictions.csv` every variant's test predictions.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from audiocnn import atomic, tracking
from audiocnn.config import ConfigError
from audiocnn.data.prepare import fold_values, is_prepared, prepare
from audiocnn.evaluation.evaluate import evaluate
from audiocnn.evaluation.plots import plot_confusion_matrix
from audiocnn.features.store import TEXT_COLUMNS
from audiocnn.training.train import train

STATE_FILE = "repeats.json"  # in paths.models: the parent run and the variants, for the evaluate stage


@dataclass(frozen=True)
class Variant:
    label: str         # "fold-george", "seed-1", "fold-3-seed-1"
    fold: str | None
    seed: int


def is_repeated(cfg: DictConfig) -> bool:
    return cfg.data.get("protocol", "holdout") == "cv" or bool(cfg.trainer.get("seeds"))


def variants(cfg: DictConfig) -> list[Variant]:
    """Every fold (when `data.protocol=cv`) times every seed of `trainer.seeds` (else `seed`)."""
    if cfg.data.get("protocol", "holdout") == "cv":
        if not is_prepared(cfg):
            prepare(cfg)
        folds = fold_values(pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv", dtype=TEXT_COLUMNS))
        if not folds:
            raise ConfigError(f"data.protocol=cv: data={cfg.data.name} has no folds; use trainer.seeds instead")
    else:
        folds = [None if cfg.data.get("fold") is None else str(cfg.data.fold)]
    seeds = [int(s) for s in cfg.trainer.seeds] if cfg.trainer.get("seeds") else [int(cfg.seed)]
    result = []
    for fold in folds:
        for seed in seeds:
            parts = ([f"fold-{fold}"] if len(folds) > 1 else []) + ([f"seed-{seed}"] if len(seeds) > 1 else [])
            result.append(Variant("-".join(parts), fold, seed))
    return result


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
    kind = "cv" if cfg.data.get("protocol") == "cv" else "seeds"
    return f"{tracking.default_run_name(cfg, suffix)}-{kind}"


def run_repeats(cfg: DictConfig, steps: tuple[str, ...] = ("train", "evaluate"), run_name_suffix: str = "") -> dict:
    """Run `steps` for every variant of `cfg`; after "evaluate", write and log the aggregate.

    The "train" step opens the parent run and records it in `<paths.models>/repeats.json`;
    an "evaluate"-only call (DVC's evaluate stage) picks the parent and variants up there.
    Returns the aggregate (`best_val_acc` is the mean over variants, what a sweep optimises).
    """
    state_path = Path(cfg.paths.models) / STATE_FILE
    if "train" in steps:
        todo = variants(cfg)
        tags = {**tracking.run_tags(cfg), "audiocnn.repeats": ",".join(v.label for v in todo)}
        parent = tracking.start_parent_run(cfg, parent_run_name(cfg, run_name_suffix), tags)
        atomic.write_json(state_path, {"parent_run_id": parent, "variants": [asdict(v) for v in todo]})
    else:
        state = json.loads(state_path.read_text())
        parent, todo = state["parent_run_id"], [Variant(**v) for v in state["variants"]]
    try:
        results = []
        with tracking.children_of(parent):
            for number, variant in enumerate(todo, 1):
                print(f"repeats: {variant.label} ({number}/{len(todo)})")
                single = variant_config(cfg, variant)
                summary = train(single, run_name_suffix=run_name_suffix) if "train" in steps else \
                    json.loads((Path(single.paths.models) / "run.json").read_text())
                metrics = evaluate(single) if "evaluate" in steps else {}
                results.append({"variant": variant, "best_val_acc": summary["best_val_acc"], **metrics})
        if "evaluate" not in steps:
            return {"best_val_acc": float(np.mean([r["best_val_acc"] for r in results]))}
        aggregate = write_aggregate(cfg, results)
        log_aggregate(cfg, parent, aggregate)
    except BaseException:
        tracking.end_parent_run(cfg, parent, "FAILED")
        raise
    tracking.end_parent_run(cfg, parent, "FINISHED")
    return aggregate


def summarize(results: list[dict]) -> dict:
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


def write_aggregate(cfg: DictConfig, results: list[dict]) -> dict:
    """`test.json` (aggregate), `predictions.csv` and `confusion_matrix.png` (all variants pooled)."""
    out = Path(cfg.paths.metrics)
    aggregate = summarize(results)
    atomic.write_json(out / "test.json", aggregate)
    frames = []
    for result in results:
        single = variant_config(cfg, result["variant"])
        frame = pd.read_csv(Path(single.paths.metrics) / "predictions.csv", dtype={"actual": str, "predicted": str})
        frames.append(frame.assign(run=result["variant"].label))
    predictions = pd.concat(frames, ignore_index=True)
    with atomic.atomic_path(out / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    classes = json.loads((Path(variant_config(cfg, results[0]["variant"]).paths.prepared) / "classes.json").read_text())
    matrix = pd.crosstab(pd.Categorical(predictions["actual"], classes), pd.Categorical(predictions["predicted"], classes),
                         dropna=False).to_numpy()
    plot_confusion_matrix(matrix.tolist(), classes, out / "confusion_matrix.png",
                          title=f"{cfg.model.name} on {cfg.data.name}, {len(results)} runs pooled: "
                                f"accuracy {aggregate['accuracy']:.3f} +/- {aggregate['accuracy_std']:.3f}")
    print("repeats:\n" + "\n".join(
        f"  {label:<24} accuracy {m['accuracy']:.4f}  macro-F1 {m.get('macro_f1', float('nan')):.4f}"
        for label, m in aggregate["runs"].items()))
    print(f"repeats: test accuracy {aggregate['accuracy']:.4f} +/- {aggregate['accuracy_std']:.4f} "
          f"(min {aggregate['accuracy_min']:.4f}) over {len(results)} runs -> {out / 'test.json'}")
    return aggregate


def log_aggregate(cfg: DictConfig, parent: str, aggregate: dict) -> None:
    with tracking.open_run(cfg, run_id=parent):
        mlflow.log_metrics({f"test_{k}": v for k, v in aggregate.items() if isinstance(v, float)})
        for label, metrics in aggregate["runs"].items():
            mlflow.log_metrics({f"test_{k}.{label}": v for k, v in metrics.items()})
        for name in ("test.json", "predictions.csv", "confusion_matrix.png"):
            mlflow.log_artifact(str(Path(cfg.paths.metrics) / name), artifact_path="evaluation")


def train_stage(cfg: DictConfig) -> dict:
    """DVC's train stage: one model, or every variant when folds/seeds are repeated."""
    return run_repeats(cfg, steps=("train",)) if is_repeated(cfg) else train(cfg)


def evaluate_stage(cfg: DictConfig) -> dict:
    """DVC's evaluate stage: one model's test metrics, or the aggregate over the variants."""
    if is_repeated(cfg) and not cfg.get("ensemble"):
        return run_repeats(cfg, steps=("evaluate",))
    return evaluate(cfg)
