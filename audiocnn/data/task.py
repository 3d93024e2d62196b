"""The task of a dataset and of the models trained on it: single-label (`multiclass`: one class per
clip, a softmax over the classes), `multilabel` (several per clip: a sigmoid per class, with
per-class decision thresholds) or `events` (sound event detection, docs/events.md: multi-label clips
whose strong ones carry timed events; a CRNN trained on frame targets and on its frames pooled to
the clip, `training.events`; its clip probabilities are a sigmoid per class, with thresholds, like
multi-label). Prepare writes it in classes.json; a model carries it in `model.pt` (`models.bundle`)
and in an exported file's metadata (`inference.onnx_check`), both untrusted: `task_problem` checks
them. No heavy imports: the ONNX path runs without PyTorch."""

from __future__ import annotations

import math
from typing import Any, Mapping

MULTICLASS, MULTILABEL, EVENTS = "multiclass", "multilabel", "events"
TASKS = (MULTICLASS, MULTILABEL, EVENTS)
SIGMOID_TASKS = (MULTILABEL, EVENTS)  # a sigmoid per class and per-class thresholds
DEFAULT_THRESHOLD = 0.5  # a multi-label class without a fitted threshold
MAX_TIME_STRIDE = 4096   # an events model's `events.time_stride` (CQT frames per output frame) at most
MAX_FRAME_SECONDS = 3600.0
EVENTS_KEYS = ("time_stride", "frame_seconds", "post_processing")
POST_PROCESSING_KEYS = ("thresholds", "median_frames", "min_duration", "min_gap")


def is_multilabel(task: str | None) -> bool:
    """Whether a model of `task` scores each class with its own sigmoid (multi-label and events)."""
    return task in SIGMOID_TASKS


def task_problem(meta: Mapping[str, Any], n_classes: int) -> str | None:
    """What is wrong with `meta`'s `task` (default multiclass), `thresholds` (multi-label and events only,
    optional: one number in [0, 1] per class) and `events` (events only, optional: the output frames'
    `time_stride` and `frame_seconds`), or None."""
    task = meta.get("task", MULTICLASS)
    if task not in TASKS:
        return f"task={task!r:.40}: allowed: {', '.join(TASKS)}"
    if "events" in meta:
        problem = events_problem(meta["events"], n_classes) if task == EVENTS else "events: only an events model has it"
        if problem:
            return problem
    if "thresholds" not in meta:
        return None
    thresholds = meta["thresholds"]
    if task not in SIGMOID_TASKS:
        return "thresholds: only a multi-label model has them"
    if not isinstance(thresholds, (list, tuple)) or len(thresholds) != n_classes:
        size = len(thresholds) if isinstance(thresholds, (list, tuple)) else type(thresholds).__name__
        return f"thresholds: {size}; must be a list of {n_classes} numbers, one per class"
    for i, value in enumerate(thresholds):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            return f"thresholds[{i}]={value!r:.40}: must be a number in [0, 1]"
    return None


def events_problem(events: Any, n_classes: int) -> str | None:
    """What is wrong with an events model's `events` record: `{"time_stride": int in [1, MAX_TIME_STRIDE],
    "frame_seconds": finite number in (0, MAX_FRAME_SECONDS]}` and optionally `post_processing` (the
    fields of `data.event_decoding.PostProcessing` for `n_classes` classes), nothing else; or None."""
    if not isinstance(events, Mapping):
        return f"events: {type(events).__name__}; must be a mapping with time_stride and frame_seconds"
    unknown = sorted(str(key) for key in events if key not in EVENTS_KEYS)
    if unknown:
        return f"events.{unknown[0]:.40}: unknown; allowed: {', '.join(EVENTS_KEYS)}"
    if "post_processing" in events:
        problem = post_processing_problem(events["post_processing"], n_classes)
        if problem:
            return f"events.post_processing.{problem}"
    stride, seconds = events.get("time_stride"), events.get("frame_seconds")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= MAX_TIME_STRIDE:
        return f"events.time_stride={stride!r:.40}: must be an integer in [1, {MAX_TIME_STRIDE}]"
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not 0 < seconds <= MAX_FRAME_SECONDS:
        return f"events.frame_seconds={seconds!r:.40}: must be a finite number of seconds in (0, {MAX_FRAME_SECONDS:g}]"
    return None


def post_processing_problem(record: Any, n_classes: int) -> str | None:
    """What is wrong with a stored post-processing record (`{thresholds, median_frames, min_duration,
    min_gap}`), or None."""
    from audiocnn.data.event_decoding import PostProcessing

    if not isinstance(record, Mapping) or set(record) != set(POST_PROCESSING_KEYS):
        return f"{type(record).__name__ if not isinstance(record, Mapping) else sorted(map(str, record))!s:.80}: " \
               f"must be a mapping with exactly {', '.join(POST_PROCESSING_KEYS)}"
    return PostProcessing(**record).problem(n_classes)


def post_processing_of(meta: Mapping[str, Any], n_classes: int):
    """A checked events model's decoding settings (`data.event_decoding.PostProcessing`): the stored ones,
    or for a model stored before they were fitted, `DEFAULT_THRESHOLD` for every class and no filter."""
    from audiocnn.data.event_decoding import PostProcessing

    record = (meta.get("events") or {}).get("post_processing")
    return PostProcessing(**record) if record else PostProcessing(thresholds=[DEFAULT_THRESHOLD] * n_classes)


def thresholds_of(meta: Mapping[str, Any], n_classes: int) -> list[float] | None:
    """A checked multi-label (or events) model's thresholds (DEFAULT_THRESHOLD for each class without stored
    ones); None for a single-label model."""
    if meta.get("task", MULTICLASS) not in SIGMOID_TASKS:
        return None
    return [float(t) for t in meta.get("thresholds") or [DEFAULT_THRESHOLD] * n_classes]
