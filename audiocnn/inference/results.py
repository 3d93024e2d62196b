"""`Scored`: what a backend (a bundle's `Predictor`, an exported file) answers for one input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scored:
    """One input's answer: `probabilities` `(n_classes,)` (None if it could not be read, see `error`)."""

    name: str
    duration: float = 0.0
    probabilities: np.ndarray | None = None
    windows: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (start frame, probabilities)
    error: str = ""
