"""What every audiocnn model shares: the classifier head and the timm-style model interface.

Every model maps a window batch to logits: its `frontend` makes the log-CQT window, then two
halves, so transfer learning, Grad-CAM and export never need to know a model's layer names:
    frontend              what the model takes -> (batch, 1, n_bins, frames): `nn.Identity` for
                          windows of stored frames, `features.cqt.CQTFrontend` (waveform windows
                          `(batch, samples)`) for a model trained on the fly; its kernels are in the
                          model's state_dict (`frontend.*`)
    classify(frames)      (batch, 1, n_bins, frames) -> (batch, n_classes): the model after its front-end
    forward_features(x)   (batch, 1, n_bins, frames) -> (batch, C, F', T')  the conv feature map
    forward_head(f)       (batch, C, F', T') -> (batch, n_classes)          pooling (or RNN), then `head`
    get_classifier()      the last linear layer;  reset_classifier(n) replaces it for n classes
    head                  the `ClassifierHead`: what `model.freeze=backbone` leaves trainable
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """(batch, in_features) -> [dropout -> linear -> ReLU] per `hidden` -> dropout -> `fc` -> (batch, n_classes)."""

    def __init__(self, in_features: int, n_classes: int, hidden: Sequence[int] = (), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        self.hidden = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.hidden(x))
        return x if pre_logits else self.fc(x)


class CQTClassifier(nn.Module):
    """Base of the model families: `forward = forward_head(forward_features(frontend(x)))`.

    Subclasses call `super().__init__(frontend)` (None: `nn.Identity`), set `self.head` (a
    `ClassifierHead`) and implement `forward_features` and `forward_head` (see the module
    docstring for the shapes).
    """

    head: ClassifierHead

    def __init__(self, frontend: nn.Module | None = None):
        super().__init__()
        self.frontend = frontend if frontend is not None else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def classify(self, frames: Tensor) -> Tensor:
        """(batch, 1, n_bins, frames) log-CQT windows (the front-end's output) -> (batch, n_classes) logits."""
        return self.forward_head(self.forward_features(frames))

    def forward(self, x: Tensor) -> Tensor:
        """Windows as the model takes them (see `frontend`) -> (batch, n_classes) logits."""
        return self.classify(self.frontend(x))

    def get_classifier(self) -> nn.Linear:
        return self.head.fc

    def reset_classifier(self, n_classes: int) -> None:
        """A new, untrained last layer for `n_classes` classes (fine-tuning on other labels)."""
        self.head.fc = nn.Linear(self.head.fc.in_features, n_classes).to(self.head.fc.weight.device)


def frames_to_logits(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """What maps `model`'s log-CQT windows `(batch, 1, n_bins, frames)` to logits: `model` itself when its
    front-end is the identity (stored frames; also any module without one), so its forward hooks see the
    windows; `model.classify` when its front-end makes them (the CQT of a model trained on the fly)."""
    return model if isinstance(getattr(model, "frontend", nn.Identity()), nn.Identity) else model.classify
