"""Input normalisation against the recording channel: the model's first layer (`model.norm`).

A microphone, a room or a preamp multiplies each CQT bin by a gain of its own, roughly
constant over a recording: on the log-CQT that is an offset per bin. Two layers take it out,
chosen by `model.norm.type` (conf/norm/):

`pcen`      per-channel energy normalisation (Wang et al. 2017, "Trainable frontend for robust
            and far-field keyword spotting"), librosa's `pcen` formula with
            M = the magnitude smoothed over time by a first-order IIR (coefficient `s`):
                M[t] = s E[t] + (1 - s) M[t - 1],   M[-1] = E[0]
                PCEN = (E / (eps + M)^alpha + delta)^r - delta^r
            E / M^alpha is nearly blind to a constant gain g (it scales by g^(1 - alpha)).
            `trainable: true` makes alpha, delta, r and s one parameter per bin, stored as logs
            (so they stay positive; s is clipped to at most 1).
`bin_norm`  (x - mean) / max(std, min_std) per bin, mean and std over every training frame (set by
            the train stage from the train split, `training.norm_stats`): buffers, so in `model.pt`.
            `min_std` keeps a bin that was silent in every training clip (std 0) from turning a
            test clip's energy there into huge values.

Both run inside the model on its input `(batch, 1, n_bins, frames)`, natural-log magnitudes
(`features.cqt.LogCQT`), before the backbone; so the bundle, the ONNX/TorchScript export and
serving apply them with the model's own numbers. PCEN's smoother is a (frames x frames)
lower-triangular matrix product (the IIR in closed form: ONNX has no IIR operator and
`torchaudio.functional.lfilter` does not export), exact and cheap for a window of frames.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn


def smoothing_weights(s: Tensor, frames: int) -> tuple[Tensor, Tensor]:
    """The IIR M[t] = s E[t] + (1 - s) M[t-1], M[-1] = E[0], as M = E @ weights.T + E[0] * start.

    `s`: (bins,) in (0, 1] (bins = n_bins, or 1 for all). Returns weights (bins, frames, frames),
    weights[f, t, k] = s (1 - s)^(t - k) for k <= t, else 0; and start (bins, frames) = (1 - s)^(t + 1).
    """
    t = torch.arange(frames, device=s.device)
    lag = (t[:, None] - t[None, :]).to(s.dtype)  # (frames, frames)
    log_keep = torch.log1p(-s.clamp(max=1 - 1e-7))[:, None, None]  # log(1 - s), (n_bins, 1, 1)
    weights = torch.where(lag >= 0, s[:, None, None] * torch.exp(lag.clamp(min=0) * log_keep),
                          torch.zeros((), dtype=s.dtype, device=s.device))
    start = torch.exp((t.to(s.dtype) + 1) * log_keep[:, :, 0])
    return weights, start


class PCEN(nn.Module):
    """(batch, 1, n_bins, frames) natural-log magnitude -> (batch, 1, n_bins, frames) PCEN.

    Per bin f: E = exp(x) (the magnitude, >= features.amin), M = E smoothed over time (see
    `smoothing_weights`), then librosa's `pcen(E, b=s, gain=alpha, bias=delta, power=r, eps=eps,
    zi=(1 - s) E[:, :1])`.
    """

    def __init__(self, n_bins: int, alpha: float = 0.98, delta: float = 2.0, r: float = 0.5, s: float = 0.04,
                 eps: float = 1e-6, trainable: bool = False):
        super().__init__()
        self.eps, self.trainable = float(eps), bool(trainable)
        for name, value in (("alpha", alpha), ("delta", delta), ("r", r), ("s", s)):
            log = torch.full((n_bins if self.trainable else 1,), math.log(float(value)))  # one value: all bins
            if self.trainable:
                self.register_parameter(f"log_{name}", nn.Parameter(log))
            else:  # from the config: not in the state dict, so the config is the one source
                self.register_buffer(f"log_{name}", log, persistent=False)

    def coefficients(self) -> dict[str, Tensor]:
        """{alpha, delta, r, s}: (n_bins,) each when trainable, else (1,); positive, s at most 1."""
        values = {name: getattr(self, f"log_{name}").exp() for name in ("alpha", "delta", "r", "s")}
        values["s"] = values["s"].clamp(max=1.0)
        return values

    def forward(self, x: Tensor) -> Tensor:
        c = self.coefficients()
        energy = x.exp()  # (batch, 1, n_bins, frames)
        weights, start = smoothing_weights(c["s"], x.shape[-1])
        if weights.shape[0] == 1:  # one smoother for every bin: one (frames x frames) matrix
            smooth = energy @ weights[0].T + energy[..., :1] * start  # M, (batch, 1, n_bins, frames)
        else:
            smooth = torch.einsum("bcfk,ftk->bcft", energy, weights) + energy[..., :1] * start
        gain = torch.exp(-c["alpha"][:, None] * (math.log(self.eps) + torch.log1p(smooth / self.eps)))  # (eps+M)^-a
        delta, r = c["delta"][:, None], c["r"][:, None]
        return delta ** r * (torch.exp(r * torch.log1p(energy * gain / delta)) - 1)  # ONNX has no expm1

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}, trainable={self.trainable}"


class BinNorm(nn.Module):
    """(batch, 1, n_bins, frames) -> the same shape, (x - mean) / max(std, min_std) per bin.

    `mean` and `std` (n_bins,) are buffers (in the state dict, so in `model.pt`); they start as
    0 and 1 (the identity) until `set_statistics` gives the training split's.
    """

    def __init__(self, n_bins: int, min_std: float = 0.1):
        super().__init__()
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(n_bins))
        self.register_buffer("std", torch.ones(n_bins))

    @torch.no_grad()
    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"bin statistics of shape {tuple(mean.shape)}; the model has {self.mean.shape[0]} bins")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean[:, None]) / self.std.clamp_min(self.min_std)[:, None]

    def extra_repr(self) -> str:
        return f"n_bins={self.mean.shape[0]}, min_std={self.min_std:g}"


def input_norm(norm: Mapping[str, Any] | None, n_bins: int) -> nn.Module:
    """The layer `model.norm` names (read with `models.settings.NormSettings`: its type and that type's
    keys); nn.Identity for none / None."""
    spec = dict(norm or {"type": "none"})
    kind = spec.pop("type")
    if kind == "pcen":
        return PCEN(n_bins, **spec)
    if kind == "bin_norm":
        return BinNorm(n_bins, **spec)
    return nn.Identity()
