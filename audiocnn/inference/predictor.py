"""`Predictor`: a trained model scoring recordings the way the evaluate stage scores test clips.

    file or array -> `audiocnn.data.audio` (decode, downmix, resample to features.sr)
    -> the sliding windows of `features.sliding.window_starts` (evaluate's grid; hop: half a
       window, as evaluate; settable)
    -> `inference.graph.ChunkScorer`, the module `audiocnn export` writes: the CQT (the model's
       own front-end when trained on the fly) -> frames rounded to float16, as the store holds
       them -> the windows -> `models.scorer.WindowScorer`, evaluate's scorer: the model in each
       test-time view (`tta`, `models.tta.Views`; the identity by default) -> softmax(logits / T),
       T the bundle's temperature (1 unless trained with `trainer.calibrate=temperature`) ->
       mean over the views. A clip up to
       `features.chunk_seconds` is decoded whole, its CQT batched with other short clips' and
       its windows with theirs (`ChunkScorer.frames`, `.windows`, `.score`); a longer one is
       decoded and scored chunk by chunk with the front-end's margin (`inference.chunks`, the
       exported files' chunks, through `ChunkScorer.forward`), so memory does not grow with
       duration and its frames equal the whole file's
    -> per clip, the mean of its windows' probabilities (`features.sliding.vote`, evaluate's vote).
`audiocnn.inference.api.load_model(source)` wraps it (the Python API); the CLI (`audiocnn
predict`) and the MLflow pyfunc are thin layers over that.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from audiocnn.data.audio import clip_samples, from_samples, load_segment, read_audio_if
from audiocnn.features import sliding
from audiocnn.features.cqt import LogCQT, n_frames, pick_device
from audiocnn.features.plan import chunk_margin
from audiocnn.inference.chunks import Scored, chunks, cut
from audiocnn.inference.event_stream import stream_events
from audiocnn.inference.graph import ChunkScorer
from audiocnn.models.bundle import load_bundle
from audiocnn.models.scorer import WindowScorer
from audiocnn.data.event_decoding import Detection
from audiocnn.data.task import EVENTS, MULTICLASS, post_processing_of, thresholds_of
from audiocnn.models.tta import Views


GROUP_SAMPLES = 1 << 23  # most samples of short clips in one CQT batch (32 MB of float32)


class Predictor:
    """`Predictor.load(source)`: any source `audiocnn.models.bundle.weights_file` takes. `tta`: the
    test-time views, `{pitch_bins: [...], time_frames: [...]}` or `Views` (None: the identity)."""

    def __init__(self, model: nn.Module, bundle: dict, device: str = "cpu", batch_size: int = 64,
                 tta: Views | dict | None = None):
        features = bundle["features"]
        self.classes: list[str] = [str(c) for c in bundle["classes"]]
        # multi-label: a sigmoid per class (`models.scorer`) and each class's threshold; None: single-label
        self.task, self.thresholds = bundle.get("task", MULTICLASS), thresholds_of(bundle, len(self.classes))
        self.features = dict(features)
        self.sr, self.window = int(features["sr"]), int(features["window_frames"])
        self.hop_length = int(features["hop_length"])
        self.floor = math.log(features["amin"])
        views = (tta if isinstance(tta, Views) else Views.from_config(tta)).check(int(features["n_bins"]), self.window)
        # A chunk's frames: the model's own front-end when trained on the fly (its possibly trained
        # kernels), else the CQT the featurize stage computed its frames with.
        cqt = model.frontend.cqt if features.get("on_the_fly") else LogCQT.from_config(features)
        self.device = pick_device(device)
        # Channels-last conv weights: oneDNN's convolutions and max-pools take about 30% less time per
        # window on the 2-core CPU (NCHW 1.45-1.93 ms, channels-last 1.08-1.30 ms for the default CRNN;
        # the answers equal within 1e-7; benchmarks/eager_profile.py). `graph()` turns them back for export.
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.cqt = cqt.eval().to(self.device)
        self.batch_size = batch_size
        self.chunk_frames = max(1, int(float(features.get("chunk_seconds", 60)) * self.sr) // self.hop_length)
        self.margin = chunk_margin(self.cqt.radius, self.hop_length)
        self.window_scorer = WindowScorer.for_bundle(self.model, bundle, views)
        # an events model: its output frames (`time_stride`, `frame_seconds`) and stored decoding
        self.event_record = bundle.get("events") if self.task == EVENTS else None
        self.scorer = ChunkScorer(self.cqt, self.window_scorer, self.window, self.margin,
                                  events=self.event_record is not None)
        self.temperature, self.views = self.window_scorer.temperature, self.window_scorer.views
        self.post_processing = post_processing_of(bundle, len(self.classes)) if self.event_record else None

    @classmethod
    def load(cls, source: str | Path, **kwargs) -> "Predictor":
        return cls(*load_bundle(source), **kwargs)

    def graph(self) -> ChunkScorer:
        """The path from a chunk of waveform to its windows' probabilities as one module (what `export`
        writes; this predictor scores with its `frames` and `score`), on the CPU."""
        return self.scorer.cpu().eval().to(memory_format=torch.contiguous_format)

    @torch.inference_mode()
    def frames(self, waveform: Tensor) -> np.ndarray:
        """`(samples,)` at `self.sr` -> `(frames, n_bins)` float16 log-CQT frames."""
        return self.batch_frames([waveform])[0]

    @torch.inference_mode()
    def batch_frames(self, waves: list[Tensor]) -> list[np.ndarray]:
        """Several waveforms in one CQT call, zero-padded to the longest (zero padding leaves each
        clip's frames as they are alone, as in featurize): `[(frames_i, n_bins)]` float16."""
        batch = torch.zeros(len(waves), max(max(len(w) for w in waves), 1))
        for row, wave in enumerate(waves):
            batch[row, : len(wave)] = wave
        frames = self.scorer.frames(batch.to(self.device)).cpu().numpy()  # (batch, n_bins, frames) float16
        return [frames[row, :, : n_frames(len(wave), self.hop_length)].T for row, wave in enumerate(waves)]

    def _chunk_windows(self, source, samples: int, hop: int | None) -> Iterator[tuple[int, np.ndarray]]:
        """(start frame, probabilities `(n_classes,)`) of every window of a long clip, chunk by chunk
        (`inference.chunks`: decoded with the front-end's margin, at most `batch_size` windows a call)."""
        for chunk in chunks(samples, self.hop_length, self.window, self.margin, hop, self.chunk_frames,
                            self.batch_size):
            wave = (load_segment(source, self.sr, chunk.start, chunk.stop) if isinstance(source, (str, Path))
                    else torch.from_numpy(cut(source.numpy(), chunk.start, chunk.stop)))
            starts = torch.from_numpy(chunk.starts).to(self.device)
            with torch.inference_mode():
                probabilities = self.scorer(wave[None].to(self.device), starts)[0].cpu().numpy()
            yield from zip((chunk.first + chunk.starts).tolist(), probabilities)

    @torch.inference_mode()
    def _windows(self, frames: np.ndarray, hop: int | None) -> Iterator[tuple[int, Tensor]]:
        """(start frame, window `(1, n_bins, window)` float32) for every sliding window of a whole clip's
        `(frames, n_bins)` float16 frames (`ChunkScorer.windows`: past its frames, the floor)."""
        starts = sliding.window_starts(len(frames), self.window, hop)
        x = torch.from_numpy(np.ascontiguousarray(frames.T))[None].to(self.device, torch.float32)
        yield from zip(starts, self.scorer.windows(x, torch.tensor(starts, device=self.device)))

    @torch.inference_mode()
    def _run(self, windows: list[Tensor]) -> np.ndarray:
        """`[(1, n_bins, window)] * n` -> `(n, n_classes)` probabilities (views, temperature: `models.scorer`)."""
        return self.scorer.score(torch.stack(windows)).cpu().numpy()

    def score(self, inputs: Sequence, sample_rate: int | None = None, hop: int | None = None,
              keep_windows: bool = False) -> Iterator[Scored]:
        """One `Scored` per input (a path, or a sample array at `sample_rate`), in order.

        Short clips are decoded and go through the CQT several at a time; long ones in chunks.
        Windows are batched across inputs (`batch_size` per model call). A file that cannot be
        read gets its `error` and the others go on.
        """
        waiting: list[Scored] = []  # not yet yielded, in input order
        group: list[tuple[Scored, Tensor]] = []  # short clips decoded, waiting for one batched CQT
        batch: list[Tensor] = []
        owners: list[tuple[Scored, int]] = []  # (whose window, its start frame), aligned with `batch`
        open_windows: dict[int, int] = {}  # id(result) -> windows in `batch`, or -1 while in `group`

        def run_batch():
            for (result, start), probs in zip(owners, self._run(batch) if batch else []):
                result.windows.append((start, probs))
                open_windows[id(result)] -= 1
            batch.clear()
            owners.clear()

        def add_windows(result: Scored, frames: np.ndarray):
            open_windows[id(result)] = 0
            for start, window in self._windows(frames, hop):
                batch.append(window)
                owners.append((result, start))
                open_windows[id(result)] += 1
                if len(batch) >= self.batch_size:
                    run_batch()

        def run_group():
            if group:
                for (result, wave), frames in zip(group, self.batch_frames([w for _, w in group])):
                    add_windows(result, frames)
                group.clear()

        def fits(samples: int) -> bool:  # decoded and scored whole, batched with other short inputs
            return n_frames(samples, self.hop_length) <= self.chunk_frames

        for number, item in enumerate(inputs):
            is_file = isinstance(item, (str, Path))
            result = Scored(name=str(item) if is_file else f"array {number}")
            waiting.append(result)
            try:
                if is_file:  # the file opened once: its header, and its samples when it is decoded whole
                    wave, samples = read_audio_if(item, self.sr, fits)
                    source, wave = item, None if wave is None else torch.from_numpy(wave)
                else:
                    source = wave = from_samples(item, sample_rate, self.sr)
                    samples = len(source)
                result.duration = samples / self.sr
                if fits(samples):
                    group.append((result, wave))
                    open_windows[id(result)] = -1
                    if len(group) >= self.batch_size or sum(len(w) for _, w in group) > GROUP_SAMPLES:
                        run_group()
                else:
                    open_windows[id(result)] = 0
                    result.windows = list(self._chunk_windows(source, samples, hop))
            except Exception as error:  # noqa: BLE001 - reported with its reason; the other inputs go on
                result.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                keep = [i for i, (owner, _) in enumerate(owners) if owner is not result]
                batch[:], owners[:] = [batch[i] for i in keep], [owners[i] for i in keep]
                group[:] = [(r, w) for r, w in group if r is not result]
            while waiting and (waiting[0].error or open_windows.get(id(waiting[0])) == 0):
                yield _finish(waiting.pop(0), keep_windows)
        run_group()
        run_batch()
        for result in waiting:
            yield _finish(result, keep_windows)

    def events(self, item, sample_rate: int | None = None) -> Iterator[Detection]:
        """An events model's events in one input (a path, or a sample array at `sample_rate`), in onset
        order as they become final (`inference.event_stream`: chunk by chunk on the evaluate stage's grid
        for frame outputs, decoded with the model's stored decoding; memory flat in the duration).
        `ValueError` (one line) for a model that is not an events model, a recording under one hop, or
        frame probabilities that are not finite."""
        if self.event_record is None:
            raise ValueError(f"task={self.task}: events need a model trained for sound event detection "
                             "(task events, docs/events.md); this one answers per clip")
        is_file = isinstance(item, (str, Path))
        source = item if is_file else from_samples(item, sample_rate, self.sr)
        samples = clip_samples(source, self.sr) if is_file else len(source)

        @torch.inference_mode()
        def frame_probabilities(chunk) -> np.ndarray:
            wave = (load_segment(source, self.sr, chunk.start, chunk.stop) if is_file
                    else torch.from_numpy(cut(source.numpy(), chunk.start, chunk.stop)))
            return self.scorer.frame_probabilities(wave[None].to(self.device),
                                                   torch.from_numpy(chunk.starts).to(self.device))[0].cpu().numpy()

        return stream_events(samples, self.features, self.event_record, self.classes, self.post_processing,
                             self.margin, self.chunk_frames, self.batch_size, frame_probabilities)

    def probabilities(self, waveform: Tensor) -> Tensor:
        """`(samples,)` at `self.sr` -> `(n_classes,)`: the mean of the sliding windows' softmax."""
        result = next(self.score([waveform.numpy()], sample_rate=self.sr))
        if result.error:
            raise ValueError(result.error)
        return torch.from_numpy(result.probabilities)


def _finish(result: Scored, keep_windows: bool) -> Scored:
    """Sets the clip's probabilities `(n_classes,)`: the vote of its windows', sorted by start."""
    if not result.error:
        result.windows.sort(key=lambda w: w[0])
        result.probabilities = sliding.vote(np.stack([p for _, p in result.windows]), [len(result.windows)])[0]
    if not keep_windows:
        result.windows = []
    return result
