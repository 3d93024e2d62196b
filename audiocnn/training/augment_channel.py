"""Augmentations for recording conditions: another microphone, instrument body or room.

Pure functions plus `CHANNEL_SPECTROGRAM` / `CHANNEL_WAVEFORM`, which `augment.py` merges into
its `SPECTROGRAM` / `WAVEFORM` tables (the one list of transforms, applied in that order), and
`LIMITS`, the range checks `augment._settings` runs on their settings. Conventions are those of
`augment.py`: spectrogram batches are `(batch, 1, n_bins, frames)` natural-log CQT magnitudes whose
floor is `log(features.amin)` (silence, or anything below amin: it stays the floor); waveform
batches are `(batch, samples)` at `features.sr` (on-the-fly features only).

Spectrogram: `eq` (a smooth random gain curve over bins, FilterAugment-style), `tilt` (a gain
linear in octaves), `reverb` (an exponential tail along time, in magnitude), `freq_warp` (a
VTLP-style stretch of the log-frequency axis around a random bin: formants move, the bins' pitch
grid does not). Waveform: `eq` (a random peaking biquad), `lowpass` (a random-cutoff biquad) and
`reverb` (convolution with an exponentially decaying noise impulse response).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torchaudio.functional as AF
from torch import Tensor

NEPER_PER_DB = math.log(10) / 20


def _uniform(low: float, high: float, n: int, device) -> Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _add_gain(x: Tensor, gain_db: Tensor, floor: float) -> Tensor:
    """`x` plus `gain_db` (broadcast to x) in log-amplitude; floor bins stay, nothing goes below the floor."""
    shifted = x + gain_db.to(x) * NEPER_PER_DB
    return torch.where(x <= floor, x, shifted.clamp_min(floor))


def eq_curve(gains_db: Tensor, n_bins: int) -> Tensor:
    """`(batch, bands)` dB gains at evenly spaced knots (first and last bin included), linearly
    interpolated to a `(batch, n_bins)` gain curve: piecewise linear, never beyond the knots' range."""
    bands = gains_db.shape[1]
    position = torch.linspace(0, bands - 1, n_bins, device=gains_db.device)  # each bin in knot units
    left = position.floor().long().clamp(max=bands - 2)
    weight = position - left
    return gains_db[:, left] * (1 - weight) + gains_db[:, left + 1] * weight


def random_eq(x: Tensor, gains_db: Tensor, floor: float) -> Tensor:
    """Random equalisation: the `eq_curve` of `gains_db` (batch, bands) added over the bins of `x`."""
    return _add_gain(x, eq_curve(gains_db, x.shape[2]).view(len(x), 1, -1, 1), floor)


def spectral_tilt(x: Tensor, db_per_octave: Tensor, bins_per_octave: int, floor: float) -> Tensor:
    """A gain of `db_per_octave` (batch,) dB per octave around the middle bin: bin k gets
    g * (k - (n_bins - 1) / 2) / bins_per_octave dB (brighter for g > 0, duller for g < 0)."""
    octaves = (torch.arange(x.shape[2], device=x.device) - (x.shape[2] - 1) / 2) / bins_per_octave
    return _add_gain(x, (db_per_octave.to(x.device)[:, None] * octaves).view(len(x), 1, -1, 1), floor)


def reverb_tail(x: Tensor, decay_frames: Tensor, attenuation_db: float, floor: float) -> Tensor:
    """Temporal smearing in the magnitude domain: m'[t] = m[t] + r * sum_{j>=1} exp(-j / tau) m[t - j].

    `tau` = `decay_frames` (batch,) (the tail falls by 1/e per tau frames), r = 10^(-attenuation_db / 20)
    the first echo's level relative to the direct sound. Causal: nothing appears before an onset.
    Floor bins count as silence (magnitude 0), so silence stays the floor.
    """
    batch, _, n_bins, frames = x.shape
    tau = decay_frames.to(x).clamp_min(1e-3)
    length = int(min(frames - 1, math.ceil(12 * float(tau.max())))) if frames > 1 else 0
    if length == 0:
        return x
    magnitude = torch.where(x <= floor, torch.zeros_like(x), x.exp())
    lags = torch.arange(1, length + 1, device=x.device, dtype=x.dtype)
    kernel = 10 ** (-attenuation_db / 20) * torch.exp(-lags[None, :] / tau[:, None])  # (batch, length)
    # conv2d is a correlation: flip so output t sums kernel[j] * m[t - j]; left-pad = causal
    weight = kernel.flip(1).view(batch, 1, 1, length)
    padded = torch.nn.functional.pad(magnitude.view(1, batch, n_bins, frames), (length, 0))
    tail = torch.nn.functional.conv2d(padded[..., :-1], weight, groups=batch).view_as(x)
    return torch.log(magnitude + tail).clamp_min(floor)


def freq_warp(x: Tensor, alpha: Tensor, centre: Tensor, floor: float) -> Tensor:
    """Stretch the bin axis by `alpha` (batch,) around bin `centre` (batch,): out[k] = x[c + (k - c) / alpha]
    (linear interpolation between bins), so a peak at c + d moves to c + alpha * d and c stays put.
    Bins whose source lies outside the range get the floor."""
    n_bins = x.shape[2]
    k = torch.arange(n_bins, device=x.device, dtype=x.dtype)[None, :]
    c = centre.to(x)[:, None]
    source = c + (k - c) / alpha.to(x)[:, None]  # (batch, n_bins)
    valid = (source >= -1e-4) & (source <= n_bins - 1 + 1e-4)
    source = source.clamp(0, n_bins - 1)
    low = source.floor().long().clamp(max=n_bins - 2) if n_bins > 1 else source.floor().long()
    weight = (source - low).view(len(x), 1, n_bins, 1)
    index = lambda i: i.view(len(x), 1, n_bins, 1).expand_as(x)  # noqa: E731
    below = x.gather(2, index(low))
    above = x.gather(2, index((low + 1).clamp(max=n_bins - 1)))
    warped = below * (1 - weight) + above * weight
    return torch.where(valid.view(len(x), 1, n_bins, 1), warped, torch.full_like(x, floor))


# ----- waveform (on-the-fly features): biquads through lfilter, reverb through fftconvolve

def peaking_coefficients(sr: int, freq: Tensor, gain_db: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """RBJ-cookbook peaking-EQ biquads, one per example: (b, a), each `(batch, 3)`, a[:, 0] = 1."""
    amp = torch.pow(10.0, gain_db / 40)
    w0 = 2 * math.pi * freq / sr
    alpha = torch.sin(w0) / (2 * q)
    cos = torch.cos(w0)
    b = torch.stack([1 + alpha * amp, -2 * cos, 1 - alpha * amp], dim=1)
    a = torch.stack([1 + alpha / amp, -2 * cos, 1 - alpha / amp], dim=1)
    return b / a[:, :1], a / a[:, :1]


def lowpass_coefficients(sr: int, cutoff: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """RBJ-cookbook low-pass biquads (as `torchaudio.functional.lowpass_biquad`), one per example."""
    w0 = 2 * math.pi * cutoff / sr
    alpha = torch.sin(w0) / (2 * q)
    cos = torch.cos(w0)
    b = torch.stack([(1 - cos) / 2, 1 - cos, (1 - cos) / 2], dim=1)
    a = torch.stack([1 + alpha, -2 * cos, 1 - alpha], dim=1)
    return b / a[:, :1], a / a[:, :1]


def waveform_filter(waveform: Tensor, b: Tensor, a: Tensor) -> Tensor:
    """`(batch, samples)` through its own biquad (b, a: `(batch, 3)`), `torchaudio.functional.lfilter`."""
    return AF.lfilter(waveform, a.to(waveform), b.to(waveform), clamp=False, batching=True)


def decaying_noise_ir(rt60: Tensor, sr: int, drr_db: float, length: int, generator=None) -> Tensor:
    """`(batch, length)` impulse responses: 1 at t=0 (the direct sound), then Gaussian noise whose
    envelope falls by 60 dB in `rt60` (batch,) seconds, scaled to `drr_db` dB below the direct sound's energy."""
    t = torch.arange(1, length, dtype=torch.float32) / sr
    envelope = torch.pow(10.0, -3 * t[None, :] / rt60.float().cpu()[:, None])  # -60 dB (amplitude) at rt60
    tail = torch.randn(len(rt60), length - 1, generator=generator) * envelope
    tail = tail / tail.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12) * 10 ** (-drr_db / 20)
    return torch.cat([torch.ones(len(rt60), 1), tail], dim=1)


def waveform_reverb(waveform: Tensor, ir: Tensor) -> Tensor:
    """`(batch, samples)` convolved with its impulse response (batch, length), cropped to its length."""
    return AF.fftconvolve(waveform, ir.to(waveform))[:, : waveform.shape[1]]


def _log_uniform(low: float, high: float, n: int, device) -> Tensor:
    return torch.exp(_uniform(math.log(low), math.log(high), n, device))


def _lowpass(w: Tensor, s: Mapping[str, Any], c: Mapping[str, Any]) -> Tensor:
    b, a = lowpass_coefficients(c["sr"], _log_uniform(s["min_hz"], s["max_hz"], len(w), "cpu"), s["q"])
    return waveform_filter(w, b.to(w.device), a.to(w.device))


def _peaking(w: Tensor, s: Mapping[str, Any], c: Mapping[str, Any]) -> Tensor:
    freq = _log_uniform(s["min_hz"], s["max_hz"], len(w), "cpu")
    b, a = peaking_coefficients(c["sr"], freq, _uniform(-s["max_db"], s["max_db"], len(w), "cpu"), s["q"])
    return waveform_filter(w, b.to(w.device), a.to(w.device))


def _reverb(w: Tensor, s: Mapping[str, Any], c: Mapping[str, Any]) -> Tensor:
    rt60 = _uniform(s["min_rt60_s"], s["max_rt60_s"], len(w), "cpu")
    length = max(2, int(math.ceil(s["max_rt60_s"] * c["sr"])))
    return waveform_reverb(w, decaying_noise_ir(rt60, c["sr"], s["drr_db"], length).to(w.device))


# name -> (default settings, function(x, settings, context) -> x); merged into augment.SPECTROGRAM / WAVEFORM
CHANNEL_SPECTROGRAM = {
    "eq": ({"max_db": 6.0, "bands": 4}, lambda x, s, c: random_eq(
        x, torch.empty(len(x), int(s["bands"]), device=x.device).uniform_(-s["max_db"], s["max_db"]), c["floor"])),
    "tilt": ({"max_db_per_octave": 2.0}, lambda x, s, c: spectral_tilt(
        x, _uniform(-s["max_db_per_octave"], s["max_db_per_octave"], len(x), x.device), c["bins_per_octave"],
        c["floor"])),
    "reverb": ({"min_decay_frames": 1.0, "max_decay_frames": 8.0, "attenuation_db": 6.0}, lambda x, s, c: reverb_tail(
        x, _uniform(s["min_decay_frames"], s["max_decay_frames"], len(x), x.device), s["attenuation_db"], c["floor"])),
    "freq_warp": ({"max_alpha": 0.1}, lambda x, s, c: freq_warp(
        x, _uniform(1 - s["max_alpha"], 1 + s["max_alpha"], len(x), x.device),
        _uniform(0, x.shape[2] - 1, len(x), x.device), c["floor"])),
}
CHANNEL_WAVEFORM = {
    "eq": ({"max_db": 6.0, "min_hz": 100.0, "max_hz": 3000.0, "q": 1.0}, _peaking),
    "lowpass": ({"min_hz": 1000.0, "max_hz": 3500.0, "q": 0.707}, _lowpass),
    "reverb": ({"min_rt60_s": 0.2, "max_rt60_s": 0.8, "drr_db": 3.0}, _reverb),
}


def _ordered(s: Mapping[str, Any], low: str, high: str) -> str | None:
    return None if s[low] <= s[high] else f"{low}={s[low]}: must be <= {high}={s[high]}"


def _positive(s: Mapping[str, Any], *keys: str) -> str | None:
    return next((f"{k}={s[k]}: must be > 0" for k in keys if s[k] <= 0), None)


def _below_nyquist(s: Mapping[str, Any], sr: int | None) -> str | None:
    if sr is not None and s["max_hz"] >= sr / 2:
        return f"max_hz={s['max_hz']}: must be below features.sr / 2 = {sr / 2:g}"
    return None


# (table name, transform) -> check(settings, context) -> "key=value: problem" or None (after augment's checks:
# every setting a finite number >= 0, p in [0, 1])
LIMITS = {
    ("spectrogram", "eq"): lambda s, c: (None if float(s["bands"]).is_integer() and s["bands"] >= 2
                                         else f"bands={s['bands']}: must be an integer >= 2"),
    ("spectrogram", "reverb"): lambda s, c: (_positive(s, "min_decay_frames")
                                             or _ordered(s, "min_decay_frames", "max_decay_frames")),
    ("spectrogram", "freq_warp"): lambda s, c: (None if s["max_alpha"] < 1
                                                else f"max_alpha={s['max_alpha']}: must be < 1"),
    ("waveform", "eq"): lambda s, c: (_positive(s, "min_hz", "q") or _ordered(s, "min_hz", "max_hz")
                                      or _below_nyquist(s, c.get("sr"))),
    ("waveform", "lowpass"): lambda s, c: (_positive(s, "min_hz", "q") or _ordered(s, "min_hz", "max_hz")
                                           or _below_nyquist(s, c.get("sr"))),
    ("waveform", "reverb"): lambda s, c: (_positive(s, "min_rt60_s") or _ordered(s, "min_rt60_s", "max_rt60_s")),
}
