"""One experiment from the Hydra command line: (prepare, featurize if missing) -> train -> evaluate.

Each Hydra job writes its model and metrics into its own output folder, so sweeps never
overwrite each other or the DVC-tracked `data/models` and `metrics/`. Folds
(`data.protocol=cv`) and seeds (`trainer.seeds`) run as repeats (audiocnn/repeats.py).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from audiocnn import tracking
from audiocnn.config import ConfigError
from audiocnn.evaluation.evaluate import evaluate
from audiocnn.repeats import is_repeated, run_repeats
from audiocnn.training.train import train


def _job_output_dir() -> tuple[str, str]:
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    overrides = ",".join(o for o in hydra.overrides.task if not o.startswith(("model=", "data=")))
    return hydra.runtime.output_dir, overrides


def run_experiment(cfg: DictConfig) -> float:
    """Train and evaluate `cfg`; return the validation accuracy (what a sweep optimises)."""
    try:  # before any work: a tracking server that does not answer ends the job in one line
        tracking.ensure_available(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    output_dir, overrides = _job_output_dir()
    cfg.paths.models = f"{output_dir}/model"
    cfg.paths.metrics = f"{output_dir}/metrics"
    if is_repeated(cfg):
        return run_repeats(cfg, run_name_suffix=overrides)["best_val_acc"]
    summary = train(cfg, run_name_suffix=overrides)
    evaluate(cfg)
    return summary["best_val_acc"]
