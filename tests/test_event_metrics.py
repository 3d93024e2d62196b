"""Event metrics (`evaluation.event_metrics`) and the decoding fitted on validation
(`training.event_postprocessing`) on fixed examples whose answers are known by hand, and against the
libraries themselves: sed_eval's event- and segment-based F1, sed_scores_eval's collar-based F1 and PSDS."""

from __future__ import annotations

import numpy as np
import pytest

from audiocnn.data.event_decoding import Detection, PostProcessing
from audiocnn.data.event_scores import WritableScores, merge_overlaps, score_frames
from audiocnn.data.events import Event
from audiocnn.evaluation.event_metrics import event_and_segment_f1, event_metrics, psds
from audiocnn.training.event_postprocessing import fit_post_processing

H = 0.1  # seconds per output frame
CLASSES = ["dog", "cat"]


def clip(n: int = 100, **runs) -> np.ndarray:
    """(n, 2) probabilities at 0.05 with `dog=[(first, stop, p), ...]`, `cat=...` frame runs set to p."""
    p = np.full((n, len(CLASSES)), 0.05)
    for label, items in runs.items():
        for first, stop, value in items:
            p[first:stop, CLASSES.index(label)] = value
    return p


def test_score_frames_are_sed_scores_eval_frames_and_stay_writable():
    scores = score_frames(clip(4), H, CLASSES)
    assert list(scores.columns) == ["onset", "offset", "dog", "cat"]
    assert np.allclose(scores["onset"], [0, 0.1, 0.2, 0.3]) and np.allclose(scores["offset"], [0.1, 0.2, 0.3, 0.4])
    selected = scores[CLASSES]  # what sed_scores_eval hands to its Cython code
    assert isinstance(selected, WritableScores) and selected.to_numpy().flags.writeable


def test_event_f1_follows_the_collars_and_segment_f1_the_seconds():
    truth = {"a": [Event("a", 1.0, 3.0, "dog"), Event("a", 5.0, 6.0, "cat")],
             "b": [Event("b", 2.0, 4.0, "dog")]}
    detections = {"a": [Detection(1.15, 3.3, "dog", 0.9),    # onset within 200 ms, offset within 400 ms (20% of 2 s)
                        Detection(5.3, 6.0, "cat", 0.8)],    # onset 300 ms late: a false positive and a miss
                  "b": [Detection(2.0, 4.0, "dog", 0.9), Detection(7.0, 7.5, "cat", 0.7)]}  # one hit, one false alarm
    got = event_and_segment_f1(detections, truth, {"a": 8.0, "b": 8.0}, CLASSES)
    # dog: 2 hits of 2 (F1 1); cat: 0 hits, 2 false positives, 1 miss (F1 0); overall 2 TP, 2 FP, 1 FN
    assert got["event_macro_f1"] == pytest.approx(0.5)
    assert got["event_micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1), abs=1e-4)
    # 1-s segments: dog a [1,3) vs [1,4): 2 TP 1 FP; dog b 2 TP; cat a [5,6) TP; cat b [7,8) FP
    assert got["segment_micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 2 + 0), abs=1e-4)


def test_sed_eval_and_sed_scores_eval_agree_on_the_same_detections():
    """The collar-based F1 of sed_scores_eval on binary frame scores equals sed_eval's on the events they make."""
    from sed_scores_eval import collar_based

    truth = {"a": [Event("a", 1.0, 3.0, "dog"), Event("a", 5.0, 6.0, "cat")], "b": [Event("b", 2.0, 4.0, "dog")]}
    frames = {"a": clip(dog=[(11, 33, 1.0)], cat=[(51, 60, 1.0)]), "b": clip(dog=[(20, 40, 1.0)], cat=[(70, 75, 1.0)])}
    detections = {k: [Detection(s * H, e * H, label, 1.0) for label in CLASSES
                      for s, e in _runs(frames[k][:, CLASSES.index(label)] > 0.5)] for k in frames}
    ours = event_and_segment_f1(detections, truth, {"a": 10.0, "b": 10.0}, CLASSES)
    theirs = collar_based.fscore({k: score_frames(v, H, CLASSES) for k, v in frames.items()},
                                 {k: [(e.onset, e.offset, e.label) for e in v] for k, v in truth.items()}, 0.5,
                                 onset_collar=0.2, offset_collar=0.2, offset_collar_rate=0.2)[0]
    assert ours["event_macro_f1"] == pytest.approx(theirs["macro_average"], abs=1e-4)
    assert ours["event_micro_f1"] == pytest.approx(theirs["micro_average"], abs=1e-4)


def _runs(active):
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(int), [0]])))
    return list(zip(edges[0::2], edges[1::2]))


def test_psds_is_one_for_exact_scores_and_falls_with_false_alarms():
    truth = {"a": [Event("a", 1.0, 3.0, "dog"), Event("a", 5.0, 6.0, "cat")]}
    exact = {"a": clip(dog=[(10, 30, 0.9)], cat=[(50, 60, 0.8)])}
    assert psds(exact, truth, {"a": 10.0}, H, CLASSES, [1, 1]) == {"psds1": 1.0, "psds2": 1.0, "psds_classes": 2}
    dogs = {"a": truth["a"][:1]}  # sed_scores_eval refuses a class without events: cat is left out
    assert psds(exact, dogs, {"a": 10.0}, H, CLASSES, [1, 1]) == {"psds1": 1.0, "psds2": 1.0, "psds_classes": 1}
    noisy = {"a": clip(dog=[(10, 30, 0.9), (70, 80, 0.95)], cat=[(50, 60, 0.8), (85, 95, 0.9)])}
    # over 6 minutes of audio one false alarm is 10 per hour: above the true event's score it costs the
    # part of the PSD-ROC (up to 100 per hour) before the true event is found
    scores = psds(noisy, truth, {"a": 360.0}, H, CLASSES, [1, 1])
    assert scores["psds1"] == pytest.approx(0.9, abs=1e-3)


def test_an_event_free_clip_counts_its_false_alarms_in_every_metric():
    truth = {"a": [Event("a", 1.0, 3.0, "dog")], "quiet": []}
    frames = {"a": clip(dog=[(10, 30, 0.9)]), "quiet": clip(dog=[(40, 50, 0.95)], cat=[(70, 75, 0.9)])}
    post = PostProcessing(thresholds=[0.5, 0.5])
    alone, _ = event_metrics({"a": frames["a"]}, truth, {"a": 10.0}, H, CLASSES, post)
    both, detections = event_metrics(frames, truth, {"a": 10.0, "quiet": 10.0}, H, CLASSES, post)
    assert alone["event_micro_f1"] == 1.0 and alone["psds1"] == 1.0
    assert both["n_strong_clips"] == 2 and len(detections["quiet"]) == 2 and both["n_true_events"] == 1
    assert both["event_micro_f1"] == pytest.approx(2 * 1 / (2 * 1 + 2))  # 1 hit, 2 false alarms in "quiet"
    assert both["segment_micro_f1"] < alone["segment_micro_f1"] and both["psds1"] < alone["psds1"]


def test_the_fit_picks_a_median_that_removes_a_spike_and_a_threshold_between_the_levels():
    clips = {"a": clip(dog=[(10, 30, 0.9), (50, 51, 0.95)], cat=[(60, 70, 0.6)]),
             "b": clip(dog=[(20, 40, 0.8)], cat=[(5, 15, 0.7)])}
    truth = {"a": [Event("a", 1.0, 3.0, "dog"), Event("a", 6.0, 7.0, "cat")],
             "b": [Event("b", 2.0, 4.0, "dog"), Event("b", 0.5, 1.5, "cat")]}
    post, f1 = fit_post_processing(clips, truth, H, CLASSES, [1, 3, 5], min_duration=0.2, min_gap=0.1)
    assert post.median_frames[0] == 3 and post.median_frames[1] == 1  # the shortest filter that removes the spike
    assert 0.05 < post.thresholds[0] < 0.8 and 0.05 < post.thresholds[1] < 0.6 and f1 == [1.0, 1.0]
    assert (post.min_duration, post.min_gap) == (0.2, 0.1) and post.problem(2) is None
    metrics, detections = event_metrics(clips, truth, {"a": 10.0, "b": 10.0}, H, CLASSES, post)
    assert metrics["event_macro_f1"] == 1.0 and metrics["n_detected_events"] == metrics["n_true_events"] == 4


def test_a_class_without_a_val_event_keeps_the_default_decoding():
    clips = {"a": clip(dog=[(10, 30, 0.9)], cat=[(60, 70, 0.6)])}
    post, f1 = fit_post_processing(clips, {"a": [Event("a", 1.0, 3.0, "dog")]}, H, CLASSES, [1, 3])
    assert post.thresholds[1] == 0.5 and post.median_frames[1] == 1 and f1[1] == 0.0


def test_without_strong_clips_the_event_figures_are_none():
    metrics, detections = event_metrics({}, {}, {}, H, CLASSES, PostProcessing(thresholds=[0.5, 0.5]))
    assert metrics["n_strong_clips"] == 0 and detections == {}
    assert all(metrics[k] is None for k in ("event_macro_f1", "segment_micro_f1", "psds1", "frame_macro_f1"))


def test_overlapping_events_of_a_class_are_merged_in_the_truth():
    events = [Event("a", 1.4, 2.3, "dog"), Event("a", 0.7, 1.1, "dog"), Event("a", 1.9, 3.0, "dog"),
              Event("a", 3.0, 3.5, "dog"), Event("a", 2.0, 2.5, "cat")]
    assert [(e.onset, e.offset, e.label) for e in merge_overlaps(events)] == \
        [(2.0, 2.5, "cat"), (0.7, 1.1, "dog"), (1.4, 3.5, "dog")]
    clips = {"a": clip(dog=[(7, 11, 0.9), (14, 35, 0.9)], cat=[(20, 25, 0.9)])}
    metrics, _ = event_metrics(clips, {"a": events}, {"a": 10.0}, H, CLASSES, PostProcessing(thresholds=[0.5, 0.5]))
    assert metrics["event_macro_f1"] == 1.0 and metrics["psds1"] == 1.0 and metrics["n_true_events"] == 3


@pytest.mark.parametrize("n_frames,n_out", [(62, 31), (10, 31), (31, 31), (32, 31), (100, 16), (1, 4), (50, 1)])
def test_each_frame_comes_from_the_central_half_of_a_window_that_holds_it(n_frames, n_out):
    from audiocnn.features.sliding import central_span, default_hop, event_window_count

    count, half = event_window_count(n_frames, n_out), default_hop(n_out)
    spans = [central_span(j, count, n_frames, n_out) for j in range(count)]
    assert [t for lo, hi in spans for t in range(lo, hi)] == list(range(n_frames))  # each frame once, in order
    for j, (lo, hi) in enumerate(spans):
        assert 0 <= lo - j * half and hi - j * half <= n_out  # inside the window
        if 0 < j < count - 1:  # away from the recording's ends: the window's central half
            assert (lo - j * half, hi - j * half) == (n_out // 4, n_out // 4 + half)
