"""The exported backends score short recordings several to a call (`inference.exported`): the answers
are those of one call per recording, in input order, with a bad input in the middle reported alone."""

from __future__ import annotations

import numpy as np
import pytest

from audiocnn.inference.export import export_model
from audiocnn.inference.exported import OnnxBackend
from tests.conftest import untrained_bundle


@pytest.fixture(scope="module")
def onnx_backend(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    untrained_bundle(root)
    return OnnxBackend(export_model(root, "onnx", root / "model.onnx"))


def inputs(backend: OnnxBackend) -> list:
    """Short clips, three of one frame count (batched together), one not an array of samples,
    and one long enough for several chunks (scored chunk by chunk, in its place)."""
    hop, window = int(backend.features["hop_length"]), int(backend.features["window_frames"])
    rng = np.random.default_rng(1)
    lengths = [hop * 10, hop * 10 + 1, hop * 10 + hop - 1, hop * 3, hop * window // 2, hop * window * 2]
    clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in lengths]
    long = rng.uniform(-0.5, 0.5, hop * window * 40).astype(np.float32)
    return clips[:3] + [np.zeros((2, 2, 2))] + clips[3:] + [long]


def test_short_recordings_are_batched_with_the_answers_of_one_call_each(onnx_backend, monkeypatch):
    items = inputs(onnx_backend)
    alone = [next(onnx_backend.score([item], sample_rate=onnx_backend.sr, keep_windows=True)) for item in items]
    calls = []
    run = onnx_backend.run
    monkeypatch.setattr(onnx_backend, "run", lambda waveform, starts: calls.append(len(waveform)) or run(waveform, starts))
    together = list(onnx_backend.score(items, sample_rate=onnx_backend.sr, keep_windows=True))

    assert [r.name for r in together] == [f"array {i}" for i in range(len(items))]
    assert together[3].error.startswith("ValueError: samples: expected a non-empty (samples,)")
    assert not any(r.error for i, r in enumerate(together) if i != 3)
    for one, batched in zip(alone, together):
        assert one.error == batched.error
        if not one.error:
            np.testing.assert_allclose(batched.probabilities, one.probabilities, atol=1e-5)
            assert [s for s, _ in batched.windows] == [s for s, _ in one.windows]
    assert 3 in calls, calls  # the three clips of one frame count went through the graph as one batch
    long_calls = sum(1 for _ in onnx_backend.chunks(len(items[-1]), None))
    assert len(calls) == 4 + long_calls  # four shapes of short chunk, then the long recording's chunks


def test_a_batch_holds_no_more_than_the_file_check_allowed_for(onnx_backend, monkeypatch):
    """At most CHUNK_WINDOWS windows and the samples of the largest chunk per call (`onnx_check.chunk_shapes`)."""
    from audiocnn.inference.export_format import CHUNK_WINDOWS
    from audiocnn.inference.onnx_check import chunk_shapes

    hop = int(onnx_backend.features["hop_length"])
    clips = [np.full(hop * 10, 0.1, np.float32)] * (CHUNK_WINDOWS * 2 + 5)
    calls = []
    run = onnx_backend.run
    monkeypatch.setattr(onnx_backend, "run", lambda waveform, starts: calls.append((waveform.shape, len(starts)))
                        or run(waveform, starts))
    results = list(onnx_backend.score(clips, sample_rate=onnx_backend.sr))
    largest = chunk_shapes({"features": onnx_backend.features, "margin_samples": onnx_backend.margin})[0][0]
    assert len(results) == len(clips) and sum(rows * windows for (rows, _), windows in calls) == len(clips)
    assert all(rows * windows <= CHUNK_WINDOWS and rows * samples <= largest for (rows, samples), windows in calls)
    assert max(rows for (rows, _), _ in calls) > CHUNK_WINDOWS // 4  # and they are batched


@pytest.mark.parametrize("block", [2, 64])  # blocks of two inputs: the long recording shares no block with the first
def test_side_by_side_scoring_gives_the_answers_of_one_worker_in_input_order(onnx_backend, monkeypatch, block):
    """`workers` calls at once (blocks, and a long recording's chunks, in threads): the same answers and windows,
    in the same order, as one worker."""
    import audiocnn.inference.backend as backend

    monkeypatch.setattr(backend, "BLOCK_CLIPS", block)
    items = inputs(onnx_backend) * 3
    monkeypatch.setattr(onnx_backend, "workers", 1)
    one = list(onnx_backend.score(items, sample_rate=onnx_backend.sr, keep_windows=True))
    monkeypatch.setattr(onnx_backend, "workers", 3)
    side_by_side = list(onnx_backend.score(items, sample_rate=onnx_backend.sr, keep_windows=True))
    assert [(r.name, r.error) for r in side_by_side] == [(r.name, r.error) for r in one]
    for a, b in zip(one, side_by_side):
        if not a.error:
            np.testing.assert_array_equal(a.probabilities, b.probabilities)
            assert [s for s, _ in a.windows] == [s for s, _ in b.windows]


def test_ordered_map_keeps_the_order_and_reads_at_most_workers_items_ahead():
    import threading
    import time

    from audiocnn.inference.backend import ordered_map

    read, together = [], threading.Barrier(2, timeout=30)

    def items():
        for number in range(20):
            read.append(number)
            yield number

    def slow_square(number):
        if number < 2:
            together.wait()  # the first two run at once (one worker alone would wait here and fail)
        time.sleep(0.01 * (number % 3))  # later items finish first
        return number * number

    taken = []
    for result in ordered_map(slow_square, items(), workers=2):
        taken.append(result)
        assert len(read) <= len(taken) + 2  # bounded: what is read is at most 2 items past what was taken
    assert taken == [n * n for n in range(20)]


@pytest.mark.parametrize("cores, expected", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (16, (4, 4))])
def test_an_onnx_file_is_scored_by_one_call_per_core_up_to_four(tmp_path, monkeypatch, cores, expected):
    """`session_threads`: calls side by side and onnxruntime threads per call, from the cores this process may
    use; the ONNX backend scores with that many workers."""
    import os

    from audiocnn.inference import onnx_check

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert onnx_check.session_threads() == expected
    untrained_bundle(tmp_path)
    assert OnnxBackend(export_model(tmp_path, "onnx", tmp_path / "model.onnx")).workers == expected[0]
