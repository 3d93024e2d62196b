"""An events model's events in a recording, streamed: the one loop every backend runs
(`inference.backend.Backend.events`: a model.pt's `Predictor`, an ONNX or TorchScript file). numpy only:
the onnxruntime path imports no torch.

    a recording of `samples` samples at features.sr (frame_count(samples, hop) CQT frames, ceil(. / s)
    output frames of s = the model's `time_stride` CQT frames)
    -> the evaluate stage's windows for frame outputs (`features.sliding.event_window_count`): every half
       window of n = window_frames // s output frames
    -> `inference.chunks` of those windows (at most `max_windows` a chunk, `max_frames` frames), each
       scored by the backend's `frame_probabilities(chunk)` -> (windows, n, n_classes)
    -> each output frame from the central half of one window (`features.sliding.central_span`)
    -> `data.event_decoding.EventDecoder` with the model's stored decoding -> events, in onset order.
Memory per step is one chunk and the decoder's few frames, whatever the duration; an event across a
chunk joint comes out once, and the events are those of the evaluate stage's decoding of the whole.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from audiocnn.data.event_decoding import Detection, EventDecoder, PostProcessing
from audiocnn.features import sliding
from audiocnn.inference.chunks import Chunk, chunks, frame_count


def stream_events(samples: int, features: Mapping, record: Mapping, classes: Sequence[str], post: PostProcessing,
                  margin: int, max_frames: int, max_windows: int,
                  frame_probabilities: Callable[[Chunk], np.ndarray]) -> Iterator[Detection]:
    """The events of a recording of `samples` samples (module docstring). `features`: the model's feature
    settings; `record`: its `events` record (`time_stride`, `frame_seconds`). `ValueError` (one line) for a
    recording under one hop, or frame probabilities that are not finite or not in [0, 1]."""
    sr, hop_length, window = int(features["sr"]), int(features["hop_length"]), int(features["window_frames"])
    if samples < hop_length:
        raise ValueError(f"too short: {samples} samples at {sr} Hz, fewer than one hop of the front-end "
                         f"(features.hop_length={hop_length}); nothing to detect")
    stride = int(record["time_stride"])
    n_out = max(window // stride, 1)
    half = sliding.default_hop(n_out)
    n_frames = math.ceil(frame_count(samples, hop_length) / stride)
    count = sliding.event_window_count(n_frames, n_out)
    decoder = EventDecoder(float(record["frame_seconds"]), classes, post)
    index = 0
    for chunk in chunks(samples, hop_length, window, margin, None, max_frames, max_windows,
                        starts=(j * half * stride for j in range(count))):
        scored = np.asarray(frame_probabilities(chunk), dtype=np.float32)
        if scored.shape != (len(chunk.starts), n_out, len(classes)):
            raise ValueError(f"the model answered frame scores of shape {list(scored.shape)} for "
                             f"{len(chunk.starts)} windows of {n_out} frames and {len(classes)} classes")
        if not np.isfinite(scored).all() or scored.min() < 0 or scored.max() > 1:
            raise ValueError("the model's frame probabilities are not finite probabilities: no answer (a "
                             "recording too loud for float32 arithmetic, or a model file with non-finite weights)")
        yield from decoder.push(sliding.central_frames(scored, index, count, n_frames))
        index += len(chunk.starts)
    yield from decoder.finish()
