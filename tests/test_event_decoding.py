"""Frame probabilities back to events (`data.event_decoding`): thresholds per class, the median filter,
minimum gap and duration, scores, the round trip with `frame_targets`, and settings refused in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audiocnn.data.event_decoding import Detection, PostProcessing, active_runs, decode_events
from audiocnn.data.events import Event, frame_targets

H = 0.1  # seconds per output frame
CLASSES = ["dog", "siren"]


def column(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=float)


def test_runs_over_the_threshold_become_events_from_their_first_frame_to_the_end_of_their_last():
    dog = column(0.1, 0.8, 0.9, 0.2, 0.1, 0.6, 0.1)
    siren = column(0.0, 0.0, 0.0, 0.0, 0.7, 0.7, 0.7)
    events = decode_events(np.stack([dog, siren], axis=1), H, CLASSES, PostProcessing([0.5, 0.6]))
    assert [(round(e.onset, 6), round(e.offset, 6), e.label) for e in events] == [
        (0.1, 0.3, "dog"), (0.4, 0.7, "siren"), (0.5, 0.6, "dog")]
    assert events[0].score == pytest.approx(0.85) and events[1].score == pytest.approx(0.7)
    shifted = decode_events(np.stack([dog, siren], axis=1), H, CLASSES, PostProcessing([0.5, 0.6]), start_seconds=60)
    assert shifted[0].onset == pytest.approx(60.1) and shifted[0].offset == pytest.approx(60.3)
    assert active_runs(np.array([True, True, False, True])) == [(0, 2), (3, 4)]


def test_the_median_filter_removes_a_spike_and_fills_a_dip_per_class():
    spike_and_dip = column(0.0, 0.0, 0.9, 0.0, 0.0, 0.9, 0.9, 0.1, 0.9, 0.9, 0.0)
    p = np.stack([spike_and_dip, spike_and_dip], axis=1)
    events = decode_events(p, H, CLASSES, PostProcessing([0.5, 0.5], median_frames=[3, 1]))
    dog = [(round(e.onset, 6), round(e.offset, 6)) for e in events if e.label == "dog"]
    siren = [(round(e.onset, 6), round(e.offset, 6)) for e in events if e.label == "siren"]
    assert dog == [(0.5, 1.0)]  # the one-frame spike at 0.2 s is gone, the dip at 0.7 s filled
    assert siren == [(0.2, 0.3), (0.5, 0.7), (0.8, 1.0)]  # no filter for this class


def test_a_short_gap_is_closed_and_a_short_event_dropped():
    dog = column(0.9, 0.9, 0.0, 0.9, 0.9, 0.0, 0.0, 0.0, 0.9, 0.0)
    p = np.stack([dog, np.zeros_like(dog)], axis=1)
    events = decode_events(p, H, CLASSES, PostProcessing([0.5, 0.5], min_gap=0.15, min_duration=0.15))
    assert [(round(e.onset, 6), round(e.offset, 6)) for e in events] == [(0.0, 0.5)]  # 0.1 s gap closed; 0.1 s event dropped
    assert events[0].score == pytest.approx(np.mean([0.9, 0.9, 0.0, 0.9, 0.9]))


def test_events_on_the_frame_grid_come_back_from_their_own_frame_targets():
    truth = [Event("a.wav", 0.2, 0.5, "dog"), Event("a.wav", 0.9, 1.3, "dog"), Event("a.wav", 0.0, 1.6, "siren")]
    targets = frame_targets(truth, 16, H, CLASSES)
    events = decode_events(targets, H, CLASSES, PostProcessing([0.5, 0.5]))
    assert sorted((round(e.onset, 6), round(e.offset, 6), e.label) for e in events) == sorted(
        (e.onset, e.offset, e.label) for e in truth)
    assert all(e.score == 1.0 for e in events) and isinstance(events[0], Detection)


@pytest.mark.parametrize("post, message", [
    (PostProcessing([0.5]), r"thresholds: must be a list of 2 numbers"),
    (PostProcessing([0.5, 1.5]), r"thresholds\[1\]=1.5: must be a number in \[0, 1\]"),
    (PostProcessing([0.5, math.nan]), r"thresholds\[1\]=nan"),
    (PostProcessing([0.5, 0.5], median_frames=4), r"median_frames\[0\]=4: must be an odd integer"),
    (PostProcessing([0.5, 0.5], median_frames=[3]), r"median_frames: must be one odd integer or a list of 2"),
    (PostProcessing([0.5, 0.5], median_frames=10**9 + 1), r"median_frames\[0\]=1000000001"),
    (PostProcessing([0.5, 0.5], min_gap=-1), r"min_gap=-1: must be a finite number of seconds >= 0"),
    (PostProcessing([0.5, 0.5], min_duration=math.inf), r"min_duration=inf"),
])
def test_bad_settings_are_refused_in_one_line(post, message):
    with pytest.raises(ValueError, match=message):
        decode_events(np.zeros((4, 2)), H, CLASSES, post)


def test_a_shape_or_frame_duration_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match=r"probabilities \[4, 3\]: expected \(frames, 2\)"):
        decode_events(np.zeros((4, 3)), H, CLASSES, PostProcessing([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"frame_seconds=0: must be a positive number"):
        decode_events(np.zeros((4, 2)), 0, CLASSES, PostProcessing([0.5, 0.5]))


def reference_events(probabilities, post: PostProcessing, classes=CLASSES, h=H):
    """The decoding rule written plainly on the whole recording (scipy's median filter, runs, joins, drops)."""
    from scipy.ndimage import median_filter

    out = []
    for k, label in enumerate(classes):
        p = probabilities[:, k]
        m = post.medians(len(classes))[k]
        smoothed = median_filter(p, size=m, mode="nearest") if m > 1 else p
        runs = []
        for first, stop in active_runs(smoothed >= post.thresholds[k]):
            if runs and (first - runs[-1][1]) * h < post.min_gap:
                runs[-1][1] = stop
            else:
                runs.append([first, stop])
        out += [(first * h, stop * h, label, p[first:stop].mean()) for first, stop in runs
                if (stop - first) * h >= post.min_duration]
    return sorted(out, key=lambda e: (e[0], classes.index(e[2])))


@pytest.mark.parametrize("seed", range(12))
def test_streamed_blocks_give_the_events_of_the_whole_recording_once(seed):
    """Any split into blocks (of 1 frame up to the whole) gives the same events as the whole at once, in
    onset order, each once: an event across a joint is neither split nor repeated."""
    from audiocnn.data.event_decoding import EventDecoder

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    smooth = np.cumsum(rng.normal(0, 0.25, (n, 2)), axis=0)  # random walks: runs of every length
    probabilities = 1 / (1 + np.exp(-smooth))
    post = PostProcessing(thresholds=list(rng.uniform(0.2, 0.8, 2)), median_frames=[int(m) for m in rng.choice([1, 3, 5, 9], 2)],
                          min_duration=float(rng.choice([0, 0.2, 0.5])), min_gap=float(rng.choice([0, 0.15, 0.4])))
    expected = reference_events(probabilities, post)
    for sizes in ([n], [1] * n, list(rng.integers(1, 40, n))):
        decoder, got, at = EventDecoder(H, CLASSES, post), [], 0
        for size in sizes:
            if at >= n:
                break
            released = decoder.push(probabilities[at: at + size])
            assert all(d.onset <= e.onset for d, e in zip(got[-1:], released))  # in order across pushes
            got += released
            at += size
        got += decoder.finish()
        assert [(round(d.onset, 9), round(d.offset, 9), d.label) for d in got] == \
            [(round(e[0], 9), round(e[1], 9), e[2]) for e in expected]
        assert [d.score for d in got] == pytest.approx([e[3] for e in expected], abs=1e-9)


def test_the_whole_recording_median_filter_is_scipys_with_nearest_edges():
    from scipy.ndimage import median_filter

    from audiocnn.data.event_decoding import median_filtered

    p = np.random.default_rng(3).uniform(size=(57, 3))
    got = median_filtered(p, [1, 5, 9])
    assert np.array_equal(got[:, 0], p[:, 0])
    for k, m in ((1, 5), (2, 9)):
        assert np.array_equal(got[:, k], median_filter(p[:, k], size=m, mode="nearest"))
