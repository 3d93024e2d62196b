"""Models: `ConvBlock` building blocks (`blocks.py`), the `CNN` and `CRNN` families, and the one place
that turns a `model` config into an `nn.Module` (via `_target_`), with its front-end: `build_model`."""

from __future__ import annotations

import copy
from typing import Mapping

from hydra.utils import instantiate
from torch import nn

from audiocnn.features.cqt import CQTFrontend

# Keys of a model config that are not constructor arguments (identity, transfer learning, the events
# task's blocks: `event_pool.capped_time_stride`).
DESCRIPTIVE_KEYS = ("name", "init_from", "freeze", "event_time_stride")


def model_kwargs(model: Mapping) -> dict:
    """The model config (a plain mapping, as model.pt stores it) as constructor arguments (with `_target_`),
    minus descriptive keys; a copy."""
    return copy.deepcopy({key: value for key, value in model.items() if key not in DESCRIPTIVE_KEYS})


def build_frontend(features: Mapping) -> nn.Module | None:
    """The front-end a model with these `features` settings takes: `CQTFrontend` (waveform windows
    `(batch, samples)` -> `(batch, 1, n_bins, frames)`) when `features.on_the_fly`, else None (the
    model takes stored frames: `nn.Identity`)."""
    return CQTFrontend.from_config(features) if features.get("on_the_fly") else None


def build_model(model: Mapping, n_classes: int, n_bins: int, top_db: float | None = None,
                frontend: nn.Module | None = None) -> nn.Module:
    """Instantiate `model["_target_"]` (the model config as a plain mapping) with its arguments, `n_classes`,
    `n_bins` (CQT bins),
    `top_db` (`features.top_db`: the model's input is peak-normalised, see `PeakNormalize`) and
    `frontend` (`build_frontend`; None: stored frames)."""
    build = instantiate(model_kwargs(model), n_classes=n_classes, n_bins=n_bins, top_db=top_db, _convert_="all",
                        _partial_=True)
    return build(frontend=frontend)  # partial: Hydra would copy the module into its config
