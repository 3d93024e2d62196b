"""The stages DVC runs alone, prepare and featurize: each reads only the groups it needs
(`audiocnn.settings.prepare_settings` / `store_settings`) and imports neither the models, Lightning nor
MLflow (the train and evaluate stages are `audiocnn.experiment`'s)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from audiocnn.data.prepare import prepare
from audiocnn.features.budget import classes_problem
from audiocnn.features.featurize import featurize
from audiocnn.settings import Settings, prepare_settings, store_settings


def prepare_stage(cfg: DictConfig, settings: Settings | None = None):
    """DVC's prepare stage (`pipelines/prepare.py`, `audiocnn prepare`): `data.prepare.prepare`, refusing more
    classes than a model file may hold (`features.budget.classes_problem`) before any clip is read.
    `settings`: `cfg`'s, when already read (`config.stage_main`); else only its groups are read."""
    return prepare(settings.prepare() if settings else prepare_settings(cfg), classes_problem=classes_problem)


def featurize_stage(cfg: DictConfig, settings: Settings | None = None) -> Path:
    """DVC's featurize stage (`pipelines/featurize.py`, `audiocnn featurize`): the store `cfg` names."""
    return featurize(settings.store() if settings else store_settings(cfg))
