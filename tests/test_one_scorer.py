"""One scorer: every way of scoring a clip takes its windows from `features.sliding.window_starts`, the
clip's answer from `features.sliding.vote`, and its test-time views and temperature from
`models.scorer` (`shift`, `view_probabilities`).

Each test swaps one of them for a sentinel with another answer and checks that every scorer
follows it: evaluate's sliding windows (stored frames and on the fly), the temperature fit,
`Predictor` (whole clips and chunks; the pyfunc and explain score through it) and the exported
backends' chunking and vote (run here around the graph they export, eagerly). A second window grid or
vote (a copy that does not call these two) leaves its scorer unchanged, and the test fails.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from audiocnn.evaluation.scoring import predict_probabilities
from audiocnn.features import sliding
from audiocnn.inference.export import metadata
from audiocnn.inference.exported import _ExportedBackend
from audiocnn.inference.predictor import Predictor
from audiocnn.models.scorer import WindowScorer
from audiocnn.models.tta import Views
from audiocnn.training.temperature import clip_nll
from audiocnn.training.windows import WaveformWindowDataset, WindowDataset
from tests.conftest import untrained_bundle

REAL_STARTS, REAL_VOTE = sliding.window_starts, sliding.vote


def every_fifth(frames: int, window: int, hop: int | None = None) -> list[int]:
    """The sentinel grid: windows every 5 frames, the last one not moved to the clip's end."""
    return list(range(0, max(frames - window, 0) + 1, 5))


def first_window(window_probabilities, counts: list[int]):
    """The sentinel vote: each clip's first window `(len(counts), n_classes)` (numpy or torch)."""
    return window_probabilities[np.cumsum([0, *counts[:-1]])]


class EagerExport(_ExportedBackend):
    """The exported backends' scoring (decoding, chunks, the vote) around the graph they export
    (`Predictor.graph()`, run eagerly here: the ONNX and TorchScript backends only replace `run`)."""

    def __init__(self, predictor: Predictor):
        super().__init__(json.loads(metadata(predictor)))
        self.graph = predictor.graph()

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.graph(torch.from_numpy(waveform), torch.from_numpy(starts)).numpy()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return untrained_bundle(tmp_path_factory.mktemp("one_scorer"))


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor.load(bundle)


def arrays(predictor: Predictor) -> list[np.ndarray]:
    """A short clip (one window), and one of about 3.5 windows."""
    rng = np.random.default_rng(0)
    samples = [predictor.hop_length * predictor.window // 3, predictor.hop_length * predictor.window * 7 // 2]
    return [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in samples]


def scorers(predictor: Predictor, bundle):
    """(name, the window starts and probabilities of each array, the arrays' probabilities) for
    `Predictor` on whole clips, `Predictor` chunk by chunk, and the exported backends."""
    chunked = Predictor.load(bundle, tta=predictor.views)
    chunked.chunk_frames = predictor.window + 10  # every clip here in chunks of at most two windows
    for name, backend in (("predictor", predictor), ("predictor in chunks", chunked),
                          ("exported", EagerExport(predictor))):
        results = list(backend.score(arrays(predictor), sample_rate=predictor.sr, keep_windows=True))
        assert not any(r.error for r in results), [r.error for r in results]
        yield name, [r.windows for r in results], [r.probabilities for r in results]


def test_every_scorer_takes_its_windows_from_the_one_grid(predictor, bundle, monkeypatch):
    monkeypatch.setattr(sliding, "window_starts", every_fifth)
    frames = [len(a) // predictor.hop_length + 1 for a in arrays(predictor)]
    expected = [every_fifth(f, predictor.window) for f in frames]
    assert expected[1] != REAL_STARTS(frames[1], predictor.window)  # the sentinel is another grid
    for name, windows, _ in scorers(predictor, bundle):
        assert [[start for start, _ in w] for w in windows] == expected, name

    # Evaluate's (and the temperature fit's) sliding windows: stored frames, and waveforms on the fly.
    window, hop_length = 32, 4
    stored = np.arange(100 * 3, dtype=np.float16).reshape(100, 3)  # (frames, n_bins)
    store = SimpleNamespace(root="store", index=pd.DataFrame({"path": ["a.wav"]}), frames=lambda row: stored)
    x, _ = WindowDataset(store, np.array([0]), np.array([0]), window, "sliding", floor=-9.0)[0]
    starts = every_fifth(100, window)
    assert x.shape == (len(starts), 1, 3, window)
    np.testing.assert_array_equal(x[:, 0].numpy(), np.stack([stored[s: s + window].T for s in starts]))
    wave = torch.arange(99 * hop_length, dtype=torch.float32)  # 100 frames
    clips = SimpleNamespace(index=pd.DataFrame({"path": ["a.wav"]}), hop_length=hop_length,
                            frame_count=lambda row: 100, segment=lambda row, start, stop: wave[start:stop])
    x, _ = WaveformWindowDataset(clips, np.array([0]), np.array([0]), window, "sliding")[0]
    assert x[:, 0].tolist() == [s * hop_length for s in starts]


def test_every_scorer_takes_the_clips_answer_from_the_one_vote(predictor, bundle, monkeypatch):
    monkeypatch.setattr(sliding, "vote", first_window)
    for name, windows, probabilities in scorers(predictor, bundle):
        assert len(windows[1]) > 1, name  # a clip whose vote is not its first window's
        for w, p in zip(windows, probabilities):
            np.testing.assert_array_equal(p, w[0][1], err_msg=name)

    # Evaluate (`evaluation.scoring`) and the temperature fit vote window logits `(n_views, windows, n_classes)`.
    logits, counts = torch.randn(2, 5, 3), [3, 2]
    first = torch.tensor([0, 3])
    expected = logits.softmax(dim=-1).mean(dim=0)[first]
    loader = [(logits[0][:, None, None], torch.tensor([2, 1]), torch.tensor(counts))]  # windows (5, 1, 1, 3)
    voted, _ = predict_probabilities(WindowScorer(torch.nn.Flatten()), loader, torch.device("cpu"))
    torch.testing.assert_close(voted, logits[0].softmax(dim=-1)[first])
    labels = torch.tensor([2, 1])
    torch.testing.assert_close(clip_nll(logits, counts, labels, 1.0),
                               -expected.gather(1, labels[:, None]).log().mean())


def test_the_vote_is_the_mean_of_each_clips_windows_in_numpy_and_torch():
    probabilities = np.random.default_rng(0).random((6, 4)).astype(np.float32)  # (windows, n_classes)
    expected = np.stack([probabilities[:1].mean(0), probabilities[1:6].mean(0)])
    voted = sliding.vote(probabilities, [1, 5])
    assert voted.dtype == np.float32 and voted.shape == (2, 4)
    np.testing.assert_array_equal(voted, expected)
    tensor = torch.from_numpy(probabilities).double().requires_grad_()
    voted = sliding.vote(tensor, [1, 5])
    voted.sum().backward()  # differentiable: the temperature fit's L-BFGS goes through it
    np.testing.assert_allclose(voted.detach().numpy(), expected, rtol=1e-6)
    assert tensor.grad[0].tolist() == [1.0] * 4 and tensor.grad[1].tolist() == [0.2] * 4


def test_every_scorer_takes_its_views_and_temperature_from_the_one_window_scorer(bundle, monkeypatch):
    """`models.scorer` is the one place test-time views are cut (`shift`) and logits become probabilities
    (`view_probabilities`: softmax at the temperature, mean over the views). Each is swapped for a sentinel
    here; evaluate, the temperature fit, `Predictor` (whole clips, chunks) and the exported graph must all
    follow it. A second copy of the views or of the temperature leaves its scorer unchanged: the test fails."""
    from audiocnn.models import scorer as one_scorer

    tta = {"pitch_bins": [1], "time_frames": [0]}  # one view, not the identity: every window is shifted
    predictor = Predictor.load(bundle, tta=tta)
    n_classes = len(predictor.classes)
    sentinel = torch.zeros(n_classes)
    sentinel[n_classes - 1] = 1.0  # every window sure of the last class

    def sure_of_the_last_class(logits, temperature=1.0, multilabel=False):
        return sentinel.to(logits.device).expand(logits.shape[1], n_classes).clone()

    def floor_only(x, bins, frames, floor):  # the sentinel view: silence
        return torch.full_like(x, floor)

    def evaluate_scores(views) -> torch.Tensor:  # evaluate's path: stored-frame windows, `window_logits`
        window = predictor.window
        stored = np.random.default_rng(0).normal(size=(window * 2, 84)).astype(np.float16)
        store = SimpleNamespace(root="store", index=pd.DataFrame({"path": ["a.wav"]}), frames=lambda row: stored)
        x, _ = WindowDataset(store, np.array([0]), np.array([0]), window, "sliding", floor=predictor.floor)[0]
        loader = [(x, torch.tensor([0]), torch.tensor([len(x)]))]
        scorer = WindowScorer(predictor.model, Views.from_config(views), predictor.floor, 2.0)
        return predict_probabilities(scorer, loader, torch.device("cpu"))[0][0]

    with monkeypatch.context() as patch:
        patch.setattr(one_scorer, "view_probabilities", sure_of_the_last_class)
        for name, windows, probabilities in scorers(predictor, bundle):
            for w, p in zip(windows, probabilities):
                np.testing.assert_array_equal(p, sentinel.numpy(), err_msg=name)
                assert all(np.array_equal(q, sentinel.numpy()) for _, q in w), name
        np.testing.assert_array_equal(evaluate_scores(tta).numpy(), sentinel.numpy())
        logits, counts = torch.randn(1, 5, n_classes, dtype=torch.float64), [3, 2]
        labels = torch.tensor([n_classes - 1, n_classes - 1])
        assert float(clip_nll(logits, counts, labels, 1.7)) == 0.0  # the fit's NLL scores like the rest

    silence = WindowScorer(predictor.model, floor=predictor.floor, temperature=predictor.temperature)(
        torch.full((1, 1, 84, predictor.window), predictor.floor))[0].detach().numpy()
    with monkeypatch.context() as patch:
        patch.setattr(one_scorer, "shift", floor_only)
        for name, windows, probabilities in scorers(predictor, bundle):
            for p in probabilities:
                np.testing.assert_allclose(p, silence, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(evaluate_scores(tta).numpy(), WindowScorer(
            predictor.model, floor=predictor.floor, temperature=2.0)(
            torch.full((1, 1, 84, predictor.window), predictor.floor))[0].detach().numpy(), atol=1e-6)


def test_the_eager_scorer_runs_its_model_with_each_convs_batch_norm_folded_in(predictor):
    """`Predictor` scores with `models.blocks.fold_batch_norms` applied (its outputs are the unfolded model's:
    tests/test_models.py): no conv is followed by a batch norm any more; only the input norm, after no conv,
    stays."""
    modules = list(predictor.model.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in modules) >= 2
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in modules) <= 1
