"""Checks of the `evaluate` config group (conf/evaluate/), run before any work."""

from __future__ import annotations

from omegaconf import OmegaConf

from audiocnn.errors import ConfigError

EVALUATE_KEYS = {"top_k", "calibration_bins", "bootstrap_resamples", "bootstrap_seed", "explain",
                 "explain_clips_per_class"}


def validate_evaluate(cfg) -> None:
    """Raise `ConfigError` naming the first bad `evaluate.*` setting."""

    settings = cfg.get("evaluate")
    if settings is None:
        return
    unknown = set(settings) - EVALUATE_KEYS
    if unknown:
        raise ConfigError(f"evaluate.{sorted(unknown)[0]}: unknown key; allowed: {', '.join(sorted(EVALUATE_KEYS))}")
    top_k = settings.get("top_k", [1])
    if not OmegaConf.is_list(top_k) and not isinstance(top_k, list):
        raise ConfigError(f"evaluate.top_k={top_k}: must be a list of positive integers")
    if not top_k or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in top_k):
        raise ConfigError(f"evaluate.top_k={list(top_k) if top_k else top_k}: must be a list of positive integers")
    for key in ("calibration_bins", "bootstrap_resamples", "explain_clips_per_class"):
        value = settings.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"evaluate.{key}={value}: must be a positive integer")
    seed = settings.get("bootstrap_seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"evaluate.bootstrap_seed={seed}: must be an integer in [0, {2**32 - 1}]")
    if not isinstance(settings.get("explain", False), bool):
        raise ConfigError(f"evaluate.explain={settings.explain}: allowed: true, false")
