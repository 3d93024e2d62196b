"""Data augmentation on whole batches, on the training device, in training only.

Spectrogram transforms act on a log-amplitude CQT batch `(batch, 1, n_bins, frames)`
whose floor (silence) is `log(features.amin)`; waveform transforms act on `(batch,
samples)` before the front-end (on-the-fly features only). Each transform is a pure
function here plus an entry in `SPECTROGRAM` / `WAVEFORM` (the recording-condition ones,
eq / tilt / reverb / freq_warp / lowpass, live in `augment_channel.py` and are merged into
these tables, the one list of transforms); `SpectrogramAugment` and
`WaveformAugment` apply the ones named in `augment.transforms` / `augment.waveform`,
each to a random subset of the batch (every example independently with probability
`p`), in the fixed order of those tables. In eval mode both are the identity. The `augment` group is
read once per job as `AugmentSettings` (`augment_settings`: every name and setting checked against
those tables and the front-end the transforms run with).

Why a roll is a pitch shift: CQT bins are geometrically spaced (f_k = fmin * 2^(k/B)),
so transposing by s semitones moves every partial by exactly s * B / 12 bins. Bins
shifted in from outside the range are unknown and get the floor (never wrapped around).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel
from torch import Tensor, nn
from torchaudio.transforms import FrequencyMasking, TimeMasking

from audiocnn.errors import SETTINGS_CONFIG, ConfigError, parse_settings
from audiocnn.features.settings import FeatureSettings
from audiocnn.training.augment_channel import CHANNEL_SPECTROGRAM, CHANNEL_WAVEFORM, LIMITS

DB_TO_NEPER = math.log(10) / 20  # gain of g dB = + g * ln(10) / 20 in natural-log amplitude


def _uniform(low: float, high: float, n: int, device) -> Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _shift_axis(x: Tensor, shifts: Tensor, axis: int, fill: float) -> Tensor:
    """Shift each example of `x` by `shifts[i]` positions along `axis` (2 = bins, 3 = frames).

    out[..., k, ...] = x[..., k - s, ...]; positions shifted in from outside get `fill`.
    """
    size = x.shape[axis]
    source = torch.arange(size, device=x.device)[None, :] - shifts.to(x.device)[:, None]  # (batch, size)
    valid = (source >= 0) & (source < size)
    view = [x.shape[0], 1, 1, 1]
    view[axis] = size
    index = source.clamp(0, size - 1).view(view).expand_as(x)
    return torch.where(valid.view(view), x.gather(axis, index), torch.full_like(x, fill))


def pitch_shift(x: Tensor, shifts: Tensor, floor: float) -> Tensor:
    """Transpose `(batch, 1, n_bins, frames)` by `shifts` (batch,) bins; positive = up in pitch."""
    return _shift_axis(x, shifts.long(), 2, floor)


def time_shift(x: Tensor, shifts: Tensor, floor: float) -> Tensor:
    """Delay (positive) or advance `(batch, 1, n_bins, frames)` by `shifts` frames.

    The part shifted out is cropped, the part shifted in is silence (floor), as if the
    window had been cut elsewhere in a clip padded with silence.
    """
    return _shift_axis(x, shifts.long(), 3, floor)


def log_gain(x: Tensor, gain_db: Tensor, floor: float) -> Tensor:
    """Multiply the magnitudes by `gain_db` (batch,) dB: add it in log-amplitude.

    Bins at the floor stay there (their true level is unknown below `amin`); nothing is
    pushed below the floor.
    """
    shifted = x + (gain_db * DB_TO_NEPER).view(-1, 1, 1, 1).to(x)
    return torch.where(x <= floor, x, shifted.clamp_min(floor))


def log_noise(x: Tensor, snr_db: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Add noise in the magnitude domain at `snr_db` (batch,) below each example's mean magnitude.

    magnitude' = magnitude + |N(0, 1)| * level, level = mean magnitude * 10^(-snr/20);
    the result is returned in log-amplitude again (so it never decreases).
    """
    magnitude = x.exp()
    level = magnitude.mean(dim=(1, 2, 3)) * torch.pow(10.0, -snr_db.to(x) / 20)
    noise = torch.randn(x.shape, device=x.device, generator=generator).abs() * level.view(-1, 1, 1, 1)
    return torch.log(magnitude + noise)


def mixup(x: Tensor, targets: Tensor, lam: Tensor, permutation: Tensor) -> tuple[Tensor, Tensor]:
    """Mix each example with `x[permutation]`: `lam * x + (1 - lam) * x[perm]`.

    `targets` are class probabilities `(batch, n_classes)`; they are mixed with the same
    `lam` (batch,), so the loss sees the mixed targets.
    """
    weights = lam.to(x).view(-1, 1, 1, 1)
    mixed = weights * x + (1 - weights) * x[permutation]
    t = lam.to(targets).view(-1, 1)
    return mixed, t * targets + (1 - t) * targets[permutation]


def mask(x: Tensor, masking: nn.Module, count: int, floor: float) -> Tensor:
    """`count` SpecAugment masks from torchaudio (`FrequencyMasking` / `TimeMasking`), set to the floor.

    Each example gets its own masks (`iid_masks`); a masked band spans the whole other axis.
    """
    for _ in range(count):
        x = masking(x, mask_value=floor)
    return x


def waveform_gain(waveform: Tensor, gain_db: Tensor) -> Tensor:
    """`(batch, samples)` times 10^(gain_db / 20) per example."""
    return waveform * torch.pow(10.0, gain_db.to(waveform) / 20).view(-1, 1)


def waveform_noise(waveform: Tensor, snr_db: Tensor) -> Tensor:
    """`(batch, samples)` plus white Gaussian noise at `snr_db` (batch,) below each example's RMS power."""
    rms = waveform.pow(2).mean(dim=1).sqrt()
    scale = rms * torch.pow(10.0, -snr_db.to(waveform) / 20)
    return waveform + torch.randn_like(waveform) * scale.view(-1, 1)


# name -> (default settings, function(x, settings, context) -> x). `p` is added to each.
Transform = Callable[[Tensor, Mapping[str, Any], Mapping[str, Any]], Tensor]
SPECTROGRAM: dict[str, tuple[dict, Transform]] = {
    "pitch_shift": ({"max_semitones": 2.0}, lambda x, s, c: pitch_shift(
        x, torch.randint(-c["max_bins"], c["max_bins"] + 1, (len(x),), device=x.device), c["floor"])),
    "time_shift": ({"max_frames": 16}, lambda x, s, c: time_shift(
        x, torch.randint(-s["max_frames"], s["max_frames"] + 1, (len(x),), device=x.device), c["floor"])),
    "gain": ({"max_db": 6.0}, lambda x, s, c: log_gain(
        x, _uniform(-s["max_db"], s["max_db"], len(x), x.device), c["floor"])),
    **CHANNEL_SPECTROGRAM,  # eq, tilt, reverb, freq_warp (augment_channel.py)
    "noise": ({"min_snr_db": 10.0, "max_snr_db": 30.0}, lambda x, s, c: log_noise(
        x, _uniform(s["min_snr_db"], s["max_snr_db"], len(x), x.device))),
    "freq_mask": ({"max_bins": 12, "count": 2}, lambda x, s, c: mask(
        x, FrequencyMasking(s["max_bins"], iid_masks=True), s["count"], c["floor"])),
    "time_mask": ({"max_frames": 16, "count": 2}, lambda x, s, c: mask(
        x, TimeMasking(s["max_frames"], iid_masks=True), s["count"], c["floor"])),
}
WAVEFORM: dict[str, tuple[dict, Transform]] = {
    "gain": ({"max_db": 6.0}, lambda w, s, c: waveform_gain(w, _uniform(-s["max_db"], s["max_db"], len(w), w.device))),
    **CHANNEL_WAVEFORM,  # eq, lowpass, reverb (augment_channel.py; they need the sample rate)
    "noise": ({"min_snr_db": 10.0, "max_snr_db": 30.0}, lambda w, s, c: waveform_noise(
        w, _uniform(s["min_snr_db"], s["max_snr_db"], len(w), w.device))),
}
MIXUP_DEFAULTS = {"alpha": 0.2}


def _settings(table: Mapping[str, tuple[dict, Transform]], name: str, given: Mapping[str, Any], where: str,
              context: Mapping[str, Any] | None = None) -> dict:
    """The transform's defaults overridden by `given`; unknown names or keys, bad values raise ValueError."""
    allowed = [*table, "mixup"] if where == "augment.transforms" else list(table)
    if name not in allowed:
        raise ValueError(f"{where}.{name}: unknown transform; allowed: {', '.join(allowed)}")
    defaults = MIXUP_DEFAULTS if name == "mixup" else table[name][0]
    unknown = set(given) - set(defaults) - {"p"}
    if unknown:
        raise ValueError(f"{where}.{name}.{sorted(unknown)[0]}: unknown setting; allowed: p, {', '.join(defaults)}")
    settings = {**defaults, "p": 1.0, **given}
    if not 0 <= settings["p"] <= 1:
        raise ValueError(f"{where}.{name}.p={settings['p']}: must be between 0 and 1")
    for key, value in settings.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise ValueError(f"{where}.{name}.{key}={value}: must be a finite number >= 0")
    check = LIMITS.get(("spectrogram" if where == "augment.transforms" else "waveform", name))
    problem = check(settings, context or {}) if check else None
    if problem:
        raise ValueError(f"{where}.{name}.{problem}")
    return settings


def _apply_to_some(x: Tensor, p: float, transform: Callable[[Tensor], Tensor]) -> Tensor:
    """`transform(x)` on the examples picked with probability `p` each; the others unchanged."""
    if p <= 0:
        return x
    chosen = torch.rand(len(x), device=x.device) < p
    if not chosen.any():
        return x
    view = (-1,) + (1,) * (x.dim() - 1)
    return torch.where(chosen.view(view), transform(x), x)


class SpectrogramAugment(nn.Module):
    """`augment.transforms` on `(batch, 1, n_bins, frames)` log-CQT batches in training mode.

    forward(x, labels) -> (x, targets): labels are class indices `(batch,)` or multi-label 0/1
    targets `(batch, n_classes)`; targets are the labels, or with mixup the mixed targets as
    probabilities `(batch, n_classes)` (the loss takes either; a multi-label pair's targets are
    `lam * y_a + (1 - lam) * y_b`, each label's probability).
    """

    def __init__(self, transforms: Mapping[str, Mapping[str, Any]] | None, n_classes: int, floor: float,
                 bins_per_octave: int):
        super().__init__()
        given = dict(transforms or {})
        self.settings = {name: _settings(SPECTROGRAM, name, dict(given[name] or {}), "augment.transforms")
                         for name in [*SPECTROGRAM, "mixup"] if name in given}
        for name in given:
            if name not in self.settings:
                _settings(SPECTROGRAM, name, {}, "augment.transforms")  # raises: unknown transform
        self.n_classes = n_classes
        max_semitones = self.settings.get("pitch_shift", {}).get("max_semitones", 0)
        self.context = {"floor": floor, "max_bins": int(round(max_semitones * bins_per_octave / 12)),
                        "bins_per_octave": bins_per_octave}

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training or not self.settings:
            return x, labels
        x = self.transform(x)
        if "mixup" not in self.settings:
            return x, labels
        targets = labels.to(x.dtype) if labels.ndim == 2 else nn.functional.one_hot(labels, self.n_classes).to(x.dtype)
        return mixup(x, targets, *self.draw_mixup(x))

    def transform(self, x: Tensor) -> Tensor:
        """Every transform but mixup, each on its random subset of the batch (training mode only)."""
        if not self.training:
            return x
        for name, settings in self.settings.items():
            if name != "mixup":
                transform = SPECTROGRAM[name][1]
                x = _apply_to_some(x, settings["p"], lambda v: transform(v, settings, self.context))
        return x

    def draw_mixup(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """mixup's draw for a batch like `x`: (lam `(batch,)`, 1 for the examples left unmixed; the
        permutation `(batch,)` of their partners). Only with `mixup` in the settings."""
        settings = self.settings["mixup"]
        lam = torch.distributions.Beta(settings["alpha"], settings["alpha"]).sample((len(x),)).to(x.device)
        lam = torch.where(torch.rand(len(x), device=x.device) < settings["p"], lam, torch.ones_like(lam))
        return lam, torch.randperm(len(x), device=x.device)

    def extra_repr(self) -> str:
        return ", ".join(self.settings) or "identity"


class WaveformAugment(nn.Module):
    """`augment.waveform` on `(batch, samples)` waveforms at `sample_rate` Hz in training mode."""

    def __init__(self, transforms: Mapping[str, Mapping[str, Any]] | None, sample_rate: int | None = None):
        super().__init__()
        given = dict(transforms or {})
        self.context = {"sr": sample_rate}
        self.settings = {name: _settings(WAVEFORM, name, dict(given[name] or {}), "augment.waveform", self.context)
                         for name in given}
        self.settings = {name: self.settings[name] for name in WAVEFORM if name in self.settings}
        needs_rate = sorted(set(self.settings) & set(CHANNEL_WAVEFORM))
        if needs_rate and sample_rate is None:
            raise ValueError(f"augment.waveform.{needs_rate[0]}: needs the sample rate (features.sr)")

    def forward(self, waveform: Tensor) -> Tensor:
        if not self.training:
            return waveform
        for name, settings in self.settings.items():
            transform = WAVEFORM[name][1]
            waveform = _apply_to_some(waveform, settings["p"], lambda w: transform(w, settings, self.context))
        return waveform

    def extra_repr(self) -> str:
        return ", ".join(self.settings) or "identity"


class AugmentSettings(BaseModel):
    """The `augment` group (conf/augment/): {transform name: its settings} for the log-CQT batches
    (`transforms`: `SPECTROGRAM` and mixup) and for the waveforms before the CQT (`waveform`: `WAVEFORM`)."""
    model_config = SETTINGS_CONFIG

    transforms: dict[str, dict[str, Any]] = {}
    waveform: dict[str, dict[str, Any]] = {}


def augment_settings(values, features: FeatureSettings) -> AugmentSettings:
    """The `augment` group (plain values) as `AugmentSettings`, each transform's settings checked against
    its defaults and limits and the front-end `features` (waveform transforms need on-the-fly features,
    a filter's top frequency the Nyquist); `ConfigError` naming the first bad setting."""
    settings = parse_settings(AugmentSettings, values, "augment")
    if settings.waveform and not features.on_the_fly:
        raise ConfigError(f"augment.waveform={sorted(settings.waveform)}: waveform transforms need "
                          "features.on_the_fly=true (stored features are spectrograms already)")
    try:
        SpectrogramAugment(settings.transforms, 2, math.log(features.amin), features.bins_per_octave)
        WaveformAugment(settings.waveform, features.sr)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None
    return settings
