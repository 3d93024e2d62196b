"""An events model's scores on the test split's strong clips (docs/events.md, "Metrics"), from the libraries
the DCASE challenge uses. Weak test clips have no timed truth and are left out.

Input: per strong clip its frame probabilities `(frames, n_classes)` (`training.event_postprocessing.clip_frames`:
every output frame once), its annotated events and its duration; the model's stored post-processing. The
truth is each clip's events with those of one class that overlap or touch joined
(`data.event_scores.merge_overlaps`).

- **Frame F1** (torchmetrics): macro and micro F1 over every (frame, class) at 0.5, against
  `data.events.frame_targets`: how well the raw frame outputs find where events sound.
- **Event-based F1** (sed_eval's `EventBasedMetrics`): the decoded events (`data.event_decoding`, with the
  stored post-processing) matched one to one with the true ones of the same class when the onsets are
  within 200 ms and the offsets within max(200 ms, 20% of the true event); macro (mean of the classes'
  F1, DCASE's ranking figure) and micro (over all events).
- **Segment-based F1** (sed_eval's `SegmentBasedMetrics`): activity per class in 1-s segments over each
  clip's duration; macro and micro.
- **PSDS** (sed_scores_eval's `intersection_based.psds`, threshold-independent: every threshold of the
  median-filtered frame scores, not the stored thresholds): the DCASE 2021-2023 scenarios. PSDS1
  (detection tolerance 0.7, ground-truth tolerance 0.7, no cross-trigger cost, alpha_st 1): events
  located precisely. PSDS2 (0.1, 0.1, cross-trigger tolerance 0.3, alpha_ct 0.5, alpha_st 1): classes
  told apart, coarse timing. Both up to 100 false positives per hour.

sed_eval for the thresholded F1s because it is the reference those figures are defined by (the DCASE
baselines log it); sed_scores_eval for PSDS because it computes the exact curve from the scores (psds_eval
approximates it with a few dozen thresholds, and its last release breaks on pandas 3).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_f1_score

from audiocnn.data.event_decoding import Detection, PostProcessing, decode_events, median_filtered
from audiocnn.data.event_scores import classes_with_events, merge_overlaps, score_frames, sed_libraries, truth
from audiocnn.data.events import frame_targets
from audiocnn.training.event_postprocessing import OFFSET_COLLAR_RATE, ONSET_COLLAR

FRAME_THRESHOLD = 0.5
SEGMENT_SECONDS = 1.0
PSDS_SCENARIOS = {  # DCASE 2021-2023 task 4
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0, "alpha_st": 1.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0},
}
MAX_EFPR = 100.0  # false positives per hour: the PSD-ROC's range


def frame_f1(clips: dict[str, np.ndarray], events: dict[str, list], frame_seconds: float,
             classes: Sequence[str]) -> dict:
    """Macro and micro F1 at `FRAME_THRESHOLD` over every (frame, class) of `clips` (None without frames)."""
    n = len(classes)
    if not clips:
        return {"frame_macro_f1": None, "frame_micro_f1": None, "n_frames": 0}
    p = torch.from_numpy(np.concatenate(list(clips.values())))
    y = torch.from_numpy(np.concatenate([frame_targets(events[k], len(v), frame_seconds, classes)
                                         for k, v in clips.items()])).int()
    args = {"num_labels": n, "threshold": FRAME_THRESHOLD}
    return {"frame_macro_f1": round(float(multilabel_f1_score(p, y, average="macro", **args)), 4),
            "frame_micro_f1": round(float(multilabel_f1_score(p, y, average="micro", **args)), 4),
            "n_frames": int(len(y))}


def _event_dicts(key: str, items) -> list[dict]:
    return [{"filename": key, "event_label": e.label, "onset": float(e.onset), "offset": float(e.offset)}
            for e in items]


def event_and_segment_f1(detections: dict[str, list[Detection]], events: dict[str, list],
                         durations: dict[str, float], classes: Sequence[str]) -> dict:
    """sed_eval's event-based (collars above) and segment-based (1 s) F1, macro and micro, of `detections`
    against `events` (audio id -> list each) over the clips' `durations` (seconds)."""
    sed_eval = sed_libraries()[0]
    labels = list(classes)
    event_based = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=labels, t_collar=ONSET_COLLAR, percentage_of_length=OFFSET_COLLAR_RATE,
        empty_system_output_handling="zero_score")
    segment_based = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=labels,
                                                             time_resolution=SEGMENT_SECONDS)
    for key in events:
        reference, estimated = _event_dicts(key, events[key]), _event_dicts(key, detections.get(key, []))
        event_based.evaluate(reference_event_list=reference, estimated_event_list=estimated)
        segment_based.evaluate(reference_event_list=reference, estimated_event_list=estimated,
                               evaluated_length_seconds=float(durations[key]))
    out = {}
    for name, metric in (("event", event_based), ("segment", segment_based)):
        results = metric.results()
        out[f"{name}_macro_f1"] = round(float(results["class_wise_average"]["f_measure"]["f_measure"]), 4)
        out[f"{name}_micro_f1"] = round(float(results["overall"]["f_measure"]["f_measure"]), 4)
    return out


def psds(clips: dict[str, np.ndarray], events: dict[str, list], durations: dict[str, float], frame_seconds: float,
         classes: Sequence[str], medians: Sequence[int]) -> dict:
    """PSDS1 and PSDS2 (module docstring) of the median-filtered frame scores, over the classes with an event
    in `events` (`psds_classes`; the PSDs are None without any)."""
    intersection_based = sed_libraries()[1].intersection_based
    present = classes_with_events({key: events[key] for key in clips}, classes)
    if not present:
        return {**{name: None for name in PSDS_SCENARIOS}, "psds_classes": 0}
    names = [classes[k] for k in present]
    scores = {key: score_frames(median_filtered(p, medians)[:, present], frame_seconds, names)
              for key, p in clips.items()}
    truths = {key: truth(events[key]) for key in clips}
    # a clip's last frame may end after its duration (frames are whole); the library wants the truth inside
    lengths = {key: max(float(durations[key]), float(scores[key]["offset"].iloc[-1])) for key in clips}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, scenario in PSDS_SCENARIOS.items():
            if len(present) == 1:  # no other class to cross-trigger (and sed_scores_eval fails on its empty stats)
                scenario = {**scenario, "cttc_threshold": None, "alpha_ct": 0.0}
            value = intersection_based.psds(scores, truths, lengths, max_efpr=MAX_EFPR, **scenario)[0]
            out[name] = round(float(value), 4)
    return {**out, "psds_classes": len(present)}


def event_metrics(clips: dict[str, np.ndarray], events: dict[str, list], durations: dict[str, float],
                  frame_seconds: float, classes: Sequence[str],
                  post: PostProcessing) -> tuple[dict, dict[str, list[Detection]]]:
    """test.json's event figures (module docstring) over the strong clips in `clips` (audio id -> frame
    probabilities), and each clip's decoded events."""
    events = {key: merge_overlaps(events[key]) for key in clips}  # the truth both libraries score against
    detections = {key: decode_events(p, frame_seconds, classes, post) for key, p in clips.items()}
    metrics = {"frame_threshold": FRAME_THRESHOLD, "frame_seconds": round(frame_seconds, 6),
               "n_strong_clips": len(clips), **frame_f1(clips, events, frame_seconds, classes)}
    if not clips:
        return {**metrics, **{f"{k}_{a}_f1": None for k in ("event", "segment") for a in ("macro", "micro")},
                **{name: None for name in PSDS_SCENARIOS}, "psds_classes": 0}, detections
    metrics.update(event_and_segment_f1(detections, events, durations, classes))
    metrics.update(psds(clips, events, durations, frame_seconds, classes, post.medians(len(classes))))
    metrics["n_detected_events"] = sum(len(d) for d in detections.values())
    metrics["n_true_events"] = sum(len(events[k]) for k in clips)
    return metrics, detections
