"""The `evaluate` config group (conf/evaluate/) as typed settings, read once before any work.

`evaluate_settings(values, features)` checks the group's keys (`EvaluateSettings`, through `errors.parse_settings`:
one line naming the dotted key and the rule) and the one check that needs the front-end: each
test-time view's shift stays inside a window (`models.tta.Views.check`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from audiocnn.errors import SETTINGS_CONFIG, parse_settings
from audiocnn.features.budget import FrontendSettings
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


def evaluate_settings(values, features: FrontendSettings) -> EvaluateSettings:
    """The `evaluate` group (plain values; None: the defaults) as `EvaluateSettings`, its views checked
    against the window of `features`; `ConfigError` naming the first bad setting."""
    settings = parse_settings(EvaluateSettings, values, "evaluate")
    settings.views.check(features.n_bins, features.window_frames, ("evaluate.tta.pitch_bins", "evaluate.tta.time_frames"))
    return settings
