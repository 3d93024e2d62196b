"""The `evaluate` config group (conf/evaluate/) as typed settings, read once before any work.

`evaluate_settings(cfg)` checks the group's keys (`EvaluateSettings`, through `errors.parse_settings`:
one line naming the dotted key and the rule) and the one check that needs the front-end: each
test-time view's shift stays inside a window (`models.tta.Views.check`).
"""

from __future__ import annotations

from typing import Annotated

from omegaconf import OmegaConf
from pydantic import AfterValidator, BaseModel, Field

from audiocnn.errors import SETTINGS_CONFIG, parse_settings
from audiocnn.models.tta import Views

SEED_MAX = 2**32 - 1  # numpy seeds are unsigned 32-bit integers
PositiveInt = Annotated[int, Field(gt=0)]


def _distinct(shifts: list[int]) -> list[int]:
    if len(set(shifts)) != len(shifts):
        raise ValueError("the shifts must be distinct")
    return shifts


Shifts = Annotated[list[int], Field(min_length=1), AfterValidator(_distinct)]


class TTASettings(BaseModel):
    """Test-time views: every (pitch bin shift, time frame shift) pair is scored; [0] and [0]: off."""
    model_config = SETTINGS_CONFIG
    pitch_bins: Shifts = [0]
    time_frames: Shifts = [0]


class EvaluateSettings(BaseModel):
    """The evaluate stage's reports (conf/evaluate/default.yaml says what each key does)."""
    model_config = SETTINGS_CONFIG
    top_k: Annotated[list[PositiveInt], Field(min_length=1)] = [1]
    calibration_bins: PositiveInt = 15
    bootstrap_resamples: PositiveInt = 1000
    bootstrap_seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0
    explain: bool = False
    explain_clips_per_class: PositiveInt = 2
    tta: TTASettings | None = None

    @property
    def views(self) -> Views:
        """The test-time views (the identity alone when `tta` is null)."""
        return Views.from_config(self.tta.model_dump() if self.tta else None)


def evaluate_settings(cfg) -> EvaluateSettings:
    """`cfg.evaluate` (absent: the defaults) as `EvaluateSettings`, its views checked against the window of
    `cfg.features`; `ConfigError` naming the first bad setting."""
    group = cfg.get("evaluate")
    settings = parse_settings(EvaluateSettings, OmegaConf.to_container(group, resolve=True) if group else None,
                              "evaluate")
    features = cfg.get("features") or {}
    settings.views.check(int(features.get("n_bins", 1)), int(features.get("window_frames", 1)),
                         ("evaluate.tta.pitch_bins", "evaluate.tta.time_frames"))
    return settings
