"""The limits of a model's front-end settings and class names, checked from numbers alone before
anything is allocated: the same for a `conf/` config (`validation`), a `model.pt` bundle
(`models.bundle`, through `models.budget`) and an exported file's metadata (`inference.onnx_check`).
Torch-free, so that ONNX predict can check a file without importing PyTorch.

A model file is untrusted data, and its numbers decide what loading and scoring it cost: a bundle
whose `features.fmin=0.001` asks for 336 GiB of CQT kernels. Every check here says what is wrong
in one line that starts with the setting, as conf validation does (`features.sr=1000000: at most
192000 ...`); callers raise it as their own error (`ConfigError` for conf/, `BundleError` for a file).

1. The front-end (`FrontendSettings`, which the `features` config group's schema extends:
   `features.settings.FeatureSettings`): every key of its type, above 0 and within its ceiling, the
   top bin below Nyquist, and what the keys make together within the limits below: the CQT kernels
   (n_bins x the longest kernel, padded to a power of two: an upper bound for the multirate front-end
   too), one window (n_bins x window_frames), one chunk of frames (`features.chunk_seconds`).
2. The classes (`classes_problem`): a list of distinct non-empty names, not too many, not too long.
The model's size and a file's stored tensors are `models.budget`'s (they need the model classes).
"""

from __future__ import annotations

import math
import reprlib
from typing import Annotated, Any, Mapping

from pydantic import BaseModel, Field, model_validator

from audiocnn.errors import SETTINGS_CONFIG, ConfigError, parse_settings, show

MAX_KERNEL_TAPS = 1 << 19  # the longest CQT kernel, Q * sr / fmin samples (8,481 at the defaults)
MAX_KERNEL_VALUES = 1 << 25  # n_bins x that kernel padded to a power of two (1.4 M at the defaults)
MAX_WINDOW_VALUES = 1 << 19  # n_bins x window_frames: one window (10,752 at the defaults)
MAX_CHUNK_SAMPLES = 1 << 24  # features.chunk_seconds x sr: one chunk of waveform (960,000 at the defaults)
MAX_CHUNK_VALUES = 1 << 24  # n_bins x frames of one chunk (157,584 at the defaults)

MAX_CLASSES = 4_096
MAX_CLASS_CHARS = 256

MAX_FILE_BYTES = 1 << 30  # a model file (any format): its entries' declared sizes together (ours: under 5 MB)
SLACK_BYTES = 1 << 16  # entries of a model.pt that are no tensor of the state (byteorder, version, ...)


def human(n: float) -> str:
    """1536 -> '1.5 KiB': a size in bytes for a message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# -- 1. the front-end -------------------------------------------------------------------------------

def cqt_q(bins_per_octave: float) -> float:
    """Librosa's Q, the cycles in a CQT kernel (`features.cqt.librosa_filter_scale` gives it to nnAudio)."""
    ratio = 2 ** (2 / bins_per_octave)
    return (ratio + 1) / (ratio - 1)


def kernel_taps(features: Mapping) -> int:
    """Samples in the longest (lowest) CQT kernel at the full rate: ceil(Q * sr / fmin)."""
    return math.ceil(cqt_q(features["bins_per_octave"]) * features["sr"] / features["fmin"])


def kernel_values(features: Mapping) -> int:
    """n_bins x the longest kernel padded to a power of two: the values of nnAudio's kernel matrix
    at the full rate, an upper bound for the kernels of either front-end (real and imaginary parts
    are twice this many float32)."""
    return int(features["n_bins"]) * (1 << max(kernel_taps(features) - 1, 0).bit_length())


def margin_bound(features: Mapping) -> int:
    """The most samples of context a chunk needs each side (`features.plan.chunk_margin`): half the
    longest kernel at the full rate, plus the decimation filters of the multirate front-end, is
    below the whole kernel padded to a power of two; plus a hop for the rounding to whole hops."""
    return (1 << max(kernel_taps(features) - 1, 0).bit_length()) + int(features["hop_length"])


class FrontendSettings(BaseModel):
    """The front-end settings a model file holds (`features.*`; the group's other keys are ignored here),
    each within its ceiling, and what they make together within the limits above (`_within_budget`)."""
    model_config = {**SETTINGS_CONFIG, "extra": "ignore"}

    sr: Annotated[int, Field(gt=0, le=192_000)]
    hop_length: Annotated[int, Field(gt=0, le=16_384)]
    fmin: Annotated[float, Field(gt=0)]
    n_bins: Annotated[int, Field(gt=0, le=1_024)]
    bins_per_octave: Annotated[int, Field(gt=0, le=120)]
    amin: Annotated[float, Field(gt=0)]
    window_frames: Annotated[int, Field(gt=0, le=4_096)]
    top_db: Annotated[float, Field(gt=0)] | None = None
    chunk_seconds: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _within_budget(self) -> "FrontendSettings":
        problem = combined_problem(self.model_dump())
        if problem:
            raise ValueError(problem)
        return self


def combined_problem(f: Mapping) -> str | None:
    """None, or the first limit that front-end settings `f` (each valid alone) break together, as one line."""
    nyquist = f["sr"] / 2
    top = f["fmin"] * 2 ** ((f["n_bins"] - 1) / f["bins_per_octave"])
    if top > nyquist:
        most = int(math.floor(f["bins_per_octave"] * math.log2(nyquist / f["fmin"]))) + 1
        return (f"features.n_bins={f['n_bins']}: top bin {top:.0f} Hz is above Nyquist {nyquist:.0f} Hz "
                f"(features.sr={f['sr']}); with features.fmin={f['fmin']} at most {max(most, 0)} bins fit")
    taps = kernel_taps(f)
    if taps > MAX_KERNEL_TAPS:
        return (f"features.fmin={show(f['fmin'])}: the lowest CQT bin needs a kernel of {taps:,} samples "
                f"(Q x features.sr / features.fmin, features.sr={f['sr']}, features.bins_per_octave="
                f"{f['bins_per_octave']}); at most {MAX_KERNEL_TAPS:,}: raise fmin, or lower sr or bins_per_octave")
    if kernel_values(f) > MAX_KERNEL_VALUES:
        return (f"features.n_bins={f['n_bins']}: CQT kernels of {f['n_bins']} bins x "
                f"{kernel_values(f) // f['n_bins']:,} samples hold {kernel_values(f):,} values; at most "
                f"{MAX_KERNEL_VALUES:,}: fewer bins, a higher fmin or a lower sr")
    if f["n_bins"] * f["window_frames"] > MAX_WINDOW_VALUES:
        return (f"features.window_frames={f['window_frames']}: a window of {f['n_bins']} bins x {f['window_frames']} "
                f"frames holds {f['n_bins'] * f['window_frames']:,} values; at most {MAX_WINDOW_VALUES:,}")
    seconds = f["chunk_seconds"]
    if seconds * f["sr"] > MAX_CHUNK_SAMPLES:
        return (f"features.chunk_seconds={show(seconds)}: a chunk of {seconds:g} s at features.sr={f['sr']} is "
                f"{seconds * f['sr']:,.0f} samples; at most {MAX_CHUNK_SAMPLES:,}")
    frames = max(int(seconds * f["sr"]) // f["hop_length"] + 1, f["window_frames"])
    if frames * f["n_bins"] > MAX_CHUNK_VALUES:
        return (f"features.hop_length={f['hop_length']}: a chunk of features.chunk_seconds={show(seconds)} s has "
                f"{frames:,} frames x {f['n_bins']} bins = {frames * f['n_bins']:,} values; at most "
                f"{MAX_CHUNK_VALUES:,}: a longer hop or shorter chunks")
    return None


def features_problem(features: Any) -> str | None:
    """None, or the first front-end setting of `features` (a model file's mapping) outside `FrontendSettings`,
    as one line starting with its dotted key."""
    if not isinstance(features, Mapping):
        return f"features={reprlib.repr(features)}: must be a mapping of front-end settings"
    try:
        parse_settings(FrontendSettings, features, "features")
    except ConfigError as error:
        return str(error)
    return None


# -- 2. the classes ---------------------------------------------------------------------------------

def classes_problem(classes: Any) -> str | None:
    """None, or what is wrong with a model's class names (one line starting with `classes`)."""
    if not isinstance(classes, (list, tuple)):
        return f"classes={reprlib.repr(classes)}: must be a list of class names (strings)"
    if not classes:
        return "classes=[]: empty; a model has at least one class"
    if len(classes) > MAX_CLASSES:
        return f"classes: {len(classes):,} class names; at most {MAX_CLASSES:,}"
    seen: dict[str, int] = {}
    for index, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip():
            return f"classes[{index}]={reprlib.repr(name)}: must be a non-empty string"
        if len(name) > MAX_CLASS_CHARS:
            return f"classes[{index}]: {len(name):,} characters; at most {MAX_CLASS_CHARS}"
        if name in seen:
            return (f"classes[{index}]={reprlib.repr(name)}: the same name as classes[{seen[name]}]; "
                    "class names must be distinct (a model's answer would be ambiguous)")
        seen[name] = index
    return None
