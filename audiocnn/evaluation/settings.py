"""Checks of the `evaluate` config group (conf/evaluate/), run before any work."""

from __future__ import annotations

from omegaconf import OmegaConf

from audiocnn.errors import ConfigError

EVALUATE_KEYS = {"top_k", "calibration_bins", "bootstrap_resamples", "bootstrap_seed", "explain",
                 "explain_clips_per_class", "tta"}
TTA_KEYS = ("pitch_bins", "time_frames")


def validate_tta(tta, n_bins: int, window_frames: int, where: str = "evaluate.tta") -> None:
    """`{pitch_bins: [k, ...], time_frames: [t, ...]}`: lists of distinct integers, each shift smaller
    than the window (`n_bins` bins, `window_frames` frames); null or {} is the identity alone."""
    from audiocnn.models.tta import Views

    if tta is None:
        return
    if not OmegaConf.is_dict(tta) and not isinstance(tta, dict):
        raise ConfigError(f"{where}={tta}: must be a mapping such as {{pitch_bins: [-1, 0, 1], time_frames: [0, 8]}}")
    for key in tta:
        if key not in TTA_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key; allowed: {', '.join(TTA_KEYS)}")
        shifts = tta[key]
        items = list(shifts) if OmegaConf.is_list(shifts) or isinstance(shifts, list) else None
        if (not items or any(not isinstance(s, int) or isinstance(s, bool) for s in items)
                or len(set(items)) != len(items)):
            shown = items if items is not None else shifts
            raise ConfigError(f"{where}.{key}={shown}: must be a non-empty list of distinct integers such as [0]")
    Views.from_config(tta).check(n_bins, window_frames, (f"{where}.pitch_bins", f"{where}.time_frames"))


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
    features = cfg.get("features") or {}
    validate_tta(settings.get("tta"), int(features.get("n_bins", 1)), int(features.get("window_frames", 1)))
