"""`CRNN`: conv blocks that keep a time axis, then a (bi)LSTM/GRU over time.

x -> frontend (`models.head`: identity, or the CQT on the fly)
  -> (batch, 1, n_bins, frames)
  -> ConvStack                      (batch, C, F', T')   pooling mostly over frequency (forward_features)
  -> frequency pooling (freq_pool)  (batch, T', D)   one feature vector per time step: `flatten`
                                                     (C * F', keeps absolute pitch height), `max`,
                                                     `attention` (C) or `max_centroid` (2C): shift-
                                                     invariant along F (models/freq_pool.py)
  -> LSTM / GRU                     (batch, T', H * directions)
  -> temporal pooling               (batch, H * directions)   last state, mean, max, or attention
                                                             (softmax-weighted sum of the steps)
  -> ClassifierHead                 (batch, n_classes) logits     (all after the ConvStack: forward_head)
The recurrent layer sees the frames in order, so "A then B" differs from "B then A".

For sound event detection the head also answers per step (`frame_logits`: (batch, T', n_classes),
one output frame per `event_pool.time_stride` CQT frames), and `event_probabilities` pools the
frames' sigmoids to the clip's (`model.event_pool`: `linear_softmax` or `attention`,
`models/event_pool.py`). `clip_output` says what `classify` (the clip's logits every scorer reads)
is: `head` (default: the head on the temporal pooling above) or `event_pool` (the logit of the event
pooling's clip probabilities, clamped to [EPS, 1 - EPS]: what an `events` model is trained on, so
evaluate, the thresholds, `Predictor` and the exports score its clips as it learned them).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from audiocnn.models.blocks import UNBOUNDED_TIME, BlockSpec, ConvStack, peak_normalize, trace_shapes
from audiocnn.models.event_pool import EPS, EventPool
from audiocnn.models.freq_pool import build_freq_pool, freq_pool_width
from audiocnn.models.head import ClassifierHead, CQTClassifier
from audiocnn.models.norm import input_norm

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}
TEMPORAL_POOLS = ("last", "mean", "max", "attention")
CLIP_OUTPUTS = ("head", "event_pool")


class CRNN(CQTClassifier):
    def __init__(
        self,
        n_classes: int,
        n_bins: int,
        blocks: Sequence[Mapping[str, Any]],
        rnn: str = "gru",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        temporal_pool: str = "mean",
        dropout: float = 0.3,
        top_db: float | None = None,
        norm: Mapping[str, Any] | None = None,
        freq_pool: str = "flatten",
        frontend: nn.Module | None = None,
        event_pool: str = "linear_softmax",
        clip_output: str = "head",
    ):
        super().__init__(frontend)
        self.clip_output = clip_output
        self.specs = [BlockSpec.from_config(b) for b in blocks]
        self.backbone = ConvStack(self.specs)
        self.input_norm = input_norm(norm, n_bins)  # model.norm: PCEN / per-bin (models.norm), first
        self.normalize = peak_normalize(top_db)  # (batch, 1, n_bins, frames), before the backbone
        out_bins = trace_shapes(self.specs, (n_bins, UNBOUNDED_TIME))[-1][0]
        self.freq_pool = build_freq_pool(freq_pool, self.backbone.out_channels, out_bins)
        self.rnn = RNNS[rnn](
            input_size=freq_pool_width(freq_pool, self.backbone.out_channels, out_bins),
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.bidirectional = bidirectional
        self.temporal_pool = temporal_pool
        width = hidden_size * (2 if bidirectional else 1)
        self.attention = nn.Linear(width, 1) if temporal_pool == "attention" else None
        self.head = ClassifierHead(width, n_classes, (), dropout)
        self.event_pool = EventPool(event_pool, width, n_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(batch, 1, n_bins, frames) -> (batch, C, F', T') conv feature map."""
        return self.backbone(self.normalize(self.input_norm(x)))

    def sequence_embedding(self, features: Tensor) -> Tensor:
        """(batch, C, F', T') -> (batch, hidden * directions): the RNN over time, pooled."""
        sequence = self.freq_pool(features)  # (batch, T', D)
        outputs, _ = self.rnn(sequence)  # (batch, T', H * directions)
        if self.temporal_pool == "mean":
            return outputs.mean(dim=1)
        if self.temporal_pool == "max":
            return outputs.amax(dim=1)
        if self.attention is not None:
            weights = self.attention(outputs).softmax(dim=1)  # (batch, T', 1): how much each step counts
            return (weights * outputs).sum(dim=1)
        if not self.bidirectional:
            return outputs[:, -1]
        # "last" for a bidirectional RNN: the forward pass ends at the last frame, the
        # backward pass at the first.
        half = outputs.shape[-1] // 2
        return torch.cat([outputs[:, -1, :half], outputs[:, 0, half:]], dim=1)

    def frame_logits(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, C, F', T') -> ((batch, T', n_classes) logits of each step, (batch, T', H * directions)
        the recurrent outputs they came from): the head on every step instead of on the pooled one."""
        outputs, _ = self.rnn(self.freq_pool(features))
        return self.head(outputs), outputs

    def pooled_events(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, C, F', T') -> ((batch, T', n_classes) frame probabilities, (batch, n_classes) clip
        probabilities pooled from them by `event_pool`)."""
        logits, outputs = self.frame_logits(features)
        probabilities = logits.sigmoid()
        return probabilities, self.event_pool(probabilities, outputs)

    def event_probabilities(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, 1, n_bins, frames) log-CQT windows -> `pooled_events` of their conv feature map."""
        return self.pooled_events(self.forward_features(frames))

    def reset_classifier(self, n_classes: int) -> None:
        """A new last layer, and a new attention of the event pooling when it has one, for `n_classes` classes."""
        super().reset_classifier(n_classes)
        if self.event_pool.attention is not None:
            old = self.event_pool.attention
            self.event_pool.attention = nn.Linear(old.in_features, n_classes).to(old.weight.device)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(batch, C, F', T') -> (batch, n_classes) clip logits: the head's (`clip_output=head`), or the
        logit of the event pooling's clip probabilities (`clip_output=event_pool`); `pre_logits`: the
        head's input to `fc` (the temporal pooling's embedding, either way). What `classify` and Grad-CAM
        differentiate."""
        if self.clip_output == "event_pool" and not pre_logits:
            return pooled_logits(self.pooled_events(features)[1])
        return self.head(self.sequence_embedding(features), pre_logits=pre_logits)


def pooled_logits(clip_probabilities: Tensor) -> Tensor:
    """(batch, n_classes) clip probabilities of the event pooling -> their logits, clamped to [EPS, 1 - EPS]
    (what `classify` answers with `clip_output=event_pool`)."""
    clip = clip_probabilities.clamp(EPS, 1 - EPS)
    return torch.log(clip) - torch.log1p(-clip)
