"""Temperature scaling (Guo et al. 2017): one scalar T > 0 dividing the logits, fitted on validation clips.

With `trainer.calibrate=temperature` the train stage scores the validation clips the way evaluate
scores test clips (every sliding window, `vote`: the mean of the windows' softmax) and picks the
T that minimises the negative log-likelihood of the clips' labels under
    p_clip(T) = mean over the clip's windows of softmax(logits / T),
by L-BFGS on log T (so T stays positive). T changes the confidences, not which class is
most likely in a window. It is stored in `model.pt` (`temperature`) and applied wherever the
model scores (evaluate, `Predictor`, the exported graph, the pyfunc).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from audiocnn.errors import ConfigError
from audiocnn.features import sliding
from audiocnn.models import scorer
from audiocnn.training.windows import window_logits

MAX_LOG_T = math.log(100.0)  # T in [1/100, 100]: beyond that the val split says nothing useful


def clip_nll(logits: Tensor, counts: list[int], labels: Tensor, temperature: Tensor | float) -> Tensor:
    """Mean NLL of `(clips,)` labels under the vote of `(n_views, sum(counts), n_classes)` window logits / T
    (`training.windows.window_logits`; a `(sum(counts), n_classes)` tensor is one view), scored as every
    scorer scores them (`models.scorer.view_probabilities`)."""
    logits = logits if logits.dim() == 3 else logits[None]
    probabilities = sliding.vote(scorer.view_probabilities(logits, temperature), counts)
    return -probabilities.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()


def fit_temperature(logits: Tensor, counts: list[int], labels: Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising `clip_nll` (L-BFGS with a strong-Wolfe line search on log T)."""
    if len(counts) == 0:
        raise ConfigError("trainer.calibrate=temperature: the val split has no clips to fit the temperature on; "
                          "give it clips (data.val_fraction) or set trainer.calibrate=none")
    logits, labels = logits.detach().double().clone(), labels.long().clone()  # not inference tensors
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = clip_nll(logits, counts, labels, log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().clamp(-MAX_LOG_T, MAX_LOG_T).exp())
    if not math.isfinite(temperature) or temperature <= 0:  # cannot happen with the clamp; never store one
        return 1.0
    return temperature


def calibrate(model: nn.Module, loader, device: torch.device) -> tuple[float, float, float]:
    """Fit T on a sliding-window `loader` (the val split): (T, val NLL at T=1, val NLL at T). `model`
    takes the loader's windows (its front-end first), scored in the identity view."""
    logits, labels, counts = window_logits(scorer.WindowScorer(model), loader, device)
    temperature = fit_temperature(logits, counts, labels)
    before, after = (float(clip_nll(logits.double(), counts, labels, t)) for t in (1.0, temperature))
    if after > before:  # L-BFGS from T=1 does not end above where it began; keep T=1 if it somehow did
        return 1.0, before, before
    return temperature, before, after
