"""An events model's decoding settings (`data.event_decoding.PostProcessing`), fitted on the validation
split after training and stored in model.pt (`events.post_processing`; docs/events.md, "Post-processing").

`clip_frames` scores every output frame of a split's strong clips: each clip of L CQT frames is cut into
windows of `features.window_frames` frames starting every half window, at 0, (n/2)·s, n·s, ... (n = window
// s output frames of s = the model's time stride CQT frames; the last window padded with the floor), and
each of its ceil(L / s) output frames is taken from the window whose central half holds it
(`features.sliding.central_span`): a frame at a window's edge lacks context on one side, and tiled windows showed it, a
blip in every class at each window joint.

The fit, per class: for each median-filter length m in `trainer.event_median_frames` (odd frame counts),
the val clips' median-filtered frame probabilities go to sed_scores_eval's collar-based `best_fscore`
(the event-based F1 of the evaluate stage: 200 ms onset collar, offset collar max(200 ms, 20% of the
event)), which finds the threshold of the best F1 over every threshold at once; the class keeps the m
and the threshold of its best F1 (the shorter m on a tie). A class without a val event keeps
`DEFAULT_THRESHOLD` and no filter. `trainer.event_min_duration` and `trainer.event_min_gap` (seconds) are
stored as set: the fit does not search them.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from audiocnn.data.event_decoding import PostProcessing, median_filtered
from audiocnn.data.event_scores import classes_with_events, score_frames, sed_libraries, truth
from audiocnn.data.task import DEFAULT_THRESHOLD
from audiocnn.features import sliding
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.windows import AudioClips, cut_window

ONSET_COLLAR = 0.2         # seconds: the DCASE event-based F1's collars (sed_eval's t_collar)
OFFSET_COLLAR_RATE = 0.2   # the offset collar is max(ONSET_COLLAR, this fraction of the event's length)


@torch.inference_mode()
def clip_frames(model: nn.Module, data: WindowDataModule, split: str, time_stride: int,
                device: torch.device) -> Iterator[tuple[int, np.ndarray]]:
    """(store row, frame probabilities `(ceil(L / time_stride), n_classes)` float32) for each strong clip
    of `split`, in store order (module docstring)."""
    window = data.features.window_frames
    n_out = window // time_stride
    half = sliding.default_hop(n_out)
    model = model.eval().to(device)
    for row in data.rows(split):
        if not data.strong[row]:
            continue
        frames = data.store.frames(int(row)) if not data.on_the_fly else clip_cqt(model, data.store, int(row), device)
        n_frames = math.ceil(len(frames) / time_stride)
        count = sliding.event_window_count(n_frames, n_out)
        windows = np.stack([cut_window(frames, j * half * time_stride, window, data.floor) for j in range(count)])
        scored = model.event_probabilities(torch.from_numpy(windows[:, None]).to(device))[0].float().cpu().numpy()
        yield int(row), sliding.central_frames(scored, 0, count, n_frames)


def clip_cqt(model: nn.Module, clips: AudioClips, row: int, device: torch.device) -> np.ndarray:
    """A model trained on the fly: clip `row`'s log-CQT frames from the model's own front-end (its possibly
    trained kernels), `(L, n_bins)` float16 as a feature store holds them."""
    waveform = clips.waveform(row)[None].to(device)  # (1, samples)
    return model.frontend.cqt(waveform)[0].T.to(torch.float16).cpu().numpy()


def best_f1_by_class(clips: dict[str, np.ndarray], events: dict[str, list], frame_seconds: float,
                     classes: Sequence[str]) -> tuple[list[float], list[float]]:
    """sed_scores_eval's collar-based best F1 and its threshold per class over `clips` (audio id ->
    `(frames, n_classes)` probabilities) against `events` (audio id -> events); F1 0 and threshold
    `DEFAULT_THRESHOLD` for a class without events or where no threshold finds one."""
    collar_based = sed_libraries()[1].collar_based
    present = classes_with_events(events, classes)
    best, cut = [0.0] * len(classes), [DEFAULT_THRESHOLD] * len(classes)
    if not present:
        return best, cut
    names = [classes[k] for k in present]
    scores = {key: score_frames(p[:, present], frame_seconds, names) for key, p in clips.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1, _, _, thresholds, _ = collar_based.best_fscore(
            scores, {key: truth(events[key]) for key in clips}, onset_collar=ONSET_COLLAR,
            offset_collar=ONSET_COLLAR, offset_collar_rate=OFFSET_COLLAR_RATE)
    for k, name in zip(present, names):
        best[k] = float(f1[name])
        if math.isfinite(thresholds[name]):
            cut[k] = round(min(max(float(thresholds[name]), 0.0), 1.0), 6)
    return best, cut


def fit_post_processing(clips: dict[str, np.ndarray], events: dict[str, list], frame_seconds: float,
                        classes: Sequence[str], median_frames: Sequence[int], min_duration: float = 0.0,
                        min_gap: float = 0.0) -> tuple[PostProcessing, list[float]]:
    """The per-class median filter (one of `median_frames`) and threshold of the best event-based F1 on
    `clips` (module docstring); also returns that F1 per class."""
    n = len(classes)
    best_f1, thresholds, medians = [-1.0] * n, [DEFAULT_THRESHOLD] * n, [1] * n
    for m in sorted(set(int(m) for m in median_frames)):
        smoothed = {key: median_filtered(p, [m] * n) for key, p in clips.items()}
        f1, cuts = best_f1_by_class(smoothed, events, frame_seconds, classes)
        for k in range(n):
            if f1[k] > best_f1[k]:
                best_f1[k], thresholds[k], medians[k] = f1[k], cuts[k], m
    for k in set(range(n)) - set(classes_with_events({key: events[key] for key in clips}, classes)):
        thresholds[k], medians[k] = DEFAULT_THRESHOLD, 1
    post = PostProcessing(thresholds=thresholds, median_frames=medians, min_duration=float(min_duration),
                          min_gap=float(min_gap))
    return post, [round(max(f, 0.0), 4) for f in best_f1]


def fit_on_split(model: nn.Module, data: WindowDataModule, split: str, time_stride: int, frame_seconds: float,
                 device: torch.device, median_frames: Sequence[int], min_duration: float,
                 min_gap: float) -> tuple[PostProcessing, list[float]] | None:
    """`fit_post_processing` on the strong clips of `split`; None when it has none."""
    clips = {str(row): p for row, p in clip_frames(model, data, split, time_stride, device)}
    if not clips:
        return None
    events = {key: data.clip_events[int(key)] for key in clips}
    return fit_post_processing(clips, events, frame_seconds, data.classes, median_frames, min_duration, min_gap)
