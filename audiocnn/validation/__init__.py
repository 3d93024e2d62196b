"""Every setting is checked before any work: `validate_config(cfg)` raises `ConfigError` naming the first bad one.

1. `rules.check_rules`: each key of conf/'s `optimizer` group, some `scheduler` and `model` keys and the
   top-level `seed`, `ensemble` and `paths.*` has a rule (a range, an allowed set or a type); an optimizer
   key must be an argument of `optimizer._target_`.
2. `checks`: what no single key shows (a GPU for `accelerator=gpu`, the optimizer class, the model
   built once).
3. The groups with their own checker, next to the code they configure: `features`
   (`features.settings.FeatureSettings`, a pydantic model: types, ceilings, the top bin below Nyquist,
   the front-end's costs, which every model file's settings meet too), `trainer`
   (`training.settings.TrainerSettings`: Lightning's devices and strategies the stage supports, the
   callbacks and Stochastic Weight Averaging's arguments), `augment`
   (`training.augment.validate_augment`), `scheduler` (`training.optim.validate_optimisation`),
   `evaluate` (`evaluation.settings.EvaluateSettings`), `serving` (`inference.requests.Limits`), `data`
   (one pydantic model per source, `data.sources.parse_data`: keys, ranges, the keys checked together,
   the folder, file and regex it names).
4. The `tracking` group (`tracking_uri.TrackingSettings`) and its store (`tracking_uri.validate_tracking`):
   `tracking.uri` / `MLFLOW_TRACKING_URI` name a store MLflow can open or create (not `file:///etc`, not
   a file that is no SQLite database).

NaN and inf are never numbers here, bools are not integers, and `3.0` is not an integer. Every
message is one line, `<dotted key>=<value>: <what is allowed>`, e.g.
`optimizer.lr=nan: must be a finite positive number`. The groups being moved to typed settings
(`data`, `features`, `trainer`, `evaluate`, `serving`, `tracking` so far) are pydantic models read by
`errors.parse_settings` (strict, NaN and inf refused, unknown keys refused, the same one-line form). Hydra structured configs were not chosen:
OmegaConf accepts NaN and inf for a float field, knows no ranges, and reports a type error in several
lines that do not say what is allowed.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from audiocnn.validation.checks import (validate_data, validate_features, validate_hardware, validate_model,
                                        validate_optimizer)
from audiocnn.validation.rules import check_rules
from audiocnn.validation.tracking_uri import validate_tracking


def validate_config(cfg: DictConfig) -> None:
    """Check every setting a stage relies on; raise `ConfigError` naming the first bad one."""
    from audiocnn.evaluation.settings import evaluate_settings
    from audiocnn.inference.requests import validate_serving
    from audiocnn.training.augment import validate_augment
    from audiocnn.training.optim import validate_optimisation
    from audiocnn.training.settings import trainer_settings

    check_rules(cfg)  # types and ranges of every key first: the checks below compute with them
    trainer_settings(OmegaConf.to_container(cfg.trainer, resolve=True) if "trainer" in cfg else {})
    validate_features(cfg)
    validate_hardware(cfg)
    validate_optimizer(cfg)
    validate_model(cfg)
    validate_augment(cfg)
    validate_optimisation(cfg)
    evaluate_settings(cfg)
    validate_serving(cfg)
    validate_data(cfg)
    validate_tracking(cfg)
