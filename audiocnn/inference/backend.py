"""Scoring recordings with any backend: decode -> chunks -> `run`, the one loop every backend shares.

A backend's `run(waveform, starts)` is `inference.graph.ChunkScorer`'s contract: a chunk of waveform
with its margins `(batch, samples)` and its windows' start frames `(n_windows,)` -> the windows'
probabilities `(batch, n_windows, n_classes)`. `Predictor` runs the module itself (PyTorch, on its
device), the exported backends the graph `audiocnn export` wrote of it (onnxruntime, TorchScript).
Around it, the same for all of them:
    input (a path, or a sample array at `sample_rate`)
    -> `audiocnn.data.audio`: read, downmix, resample to `sr`; a recording longer than
       `features.chunk_seconds` is read stretch by stretch
    -> `inference.chunks`: the sliding windows (`features.sliding.window_starts`, hop half a window
       unless asked) and the chunks that hold them, with their margins, so memory does not grow with
       the recording's duration
    -> `run`, chunk by chunk
    -> the recording's probabilities: the vote of its windows' (`features.sliding.vote`).
Short recordings (one chunk each: every FSDD clip) are scored several in one call: the inputs are
read in blocks of at most `BLOCK_CLIPS` recordings and `BLOCK_SAMPLES` samples, and the chunks of a
block that have the same length and window starts (recordings of the same frame count) go through
`run` as the rows of one batch. Each row is the chunk it would be alone (the rows are independent),
so the answers are those of one call per recording; a batch holds at most `max_windows` windows and
the samples of the longest chunk. With `workers` > 1 (an ONNX file: `onnx_check.session_threads`),
blocks, and a long recording's chunks, are scored in that many threads side by side (`ordered_map`),
each reading its files and running the graph while the others do; the answers keep the inputs' order.
numpy only: the onnxruntime path imports no torch.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from audiocnn.data.audio import read_audio_if, read_segment, samples_array
from audiocnn.data.event_decoding import Detection
from audiocnn.data.task import EVENTS, MULTICLASS, post_processing_of, thresholds_of
from audiocnn.features import sliding
from audiocnn.inference.chunks import Chunk, Scored, chunk_limits, chunks, cut, frame_count
from audiocnn.inference.event_stream import stream_events

BLOCK_CLIPS = 256  # recordings a block reads before its short chunks are batched and scored
BLOCK_SAMPLES = 1 << 23  # most decoded samples a block holds (32 MB of float32)


@dataclass
class _Pending:
    """An input of a block: its answer so far, and either its only chunk (`chunk`, `wave`: the chunk's
    samples) or, for a longer recording, its `source` of `samples` samples, scored chunk by chunk."""

    result: Scored
    chunk: Chunk | None = None
    wave: np.ndarray | None = None
    source: Callable[[int, int], np.ndarray] | None = None
    samples: int = 0
    windows: list[tuple[int, np.ndarray]] = field(default_factory=list)


class Backend:
    """Scores recordings with `run` (module docstring); a subclass gives `run` and `run_frames`."""

    workers = 1  # blocks (and a long recording's chunks) decoded and scored at once, each in a thread

    def __init__(self, classes: Sequence[str], features: Mapping, margin: int, max_windows: int,
                 record: Mapping, kind: str = "model"):
        """`classes`, `features` (the model's feature settings), `margin` (samples of context each side of a
        chunk, `features.plan.chunk_margin`), `max_windows` per call of `run`; `record`: the bundle or the
        file's metadata, for the task, its thresholds and an events model's decoding; `kind`: what the
        messages call it ("model", "file")."""
        self.classes: list[str] = [str(c) for c in classes]
        self.features: dict = dict(features)
        self.sr, self.hop_length = int(self.features["sr"]), int(self.features["hop_length"])
        self.window = int(self.features["window_frames"])
        self.margin, self.max_windows = int(margin), int(max_windows)
        # frames decoded and scored at once (`features.chunk_seconds`), and the samples of the longest chunk
        self.chunk_frames, self.largest_chunk = chunk_limits(self.features, self.margin)
        self.task, self.thresholds = record.get("task", MULTICLASS), thresholds_of(record, len(self.classes))
        self.event_record = record.get("events") if self.task == EVENTS else None
        self.post_processing = post_processing_of(record, len(self.classes)) if self.event_record else None
        self.kind = kind

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """(batch, samples) float32 chunk with margins, (n_windows,) int64 -> (batch, n_windows, n_classes)."""
        raise NotImplementedError

    def run_frames(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """An events model's frame outputs: the same inputs -> (batch, n_windows, n_out, n_classes)."""
        raise NotImplementedError

    def events(self, item, sample_rate: int | None = None) -> Iterator[Detection]:
        """An events model's events in one input (a path, or a sample array at `sample_rate`), streamed chunk
        by chunk (`inference.event_stream`) from the frame outputs and the decoding stored with the model.
        `ValueError` (one line) for a model of another task."""
        if self.event_record is None:
            raise ValueError(f"task={self.task}: events need a model trained for sound event detection "
                             f"(task events, docs/events.md); this {self.kind} answers per clip")
        source, samples = self.source(item, sample_rate)
        return stream_events(samples, self.features, self.event_record, self.classes, self.post_processing,
                             self.margin, self.chunk_frames, self.max_windows,
                             lambda chunk: self.run_frames(source(chunk.start, chunk.stop)[None], chunk.starts)[0])

    def chunks(self, samples: int, hop: int | None) -> Iterator[Chunk]:
        """The chunks of a recording of `samples` samples (`inference.chunks`)."""
        return chunks(samples, self.hop_length, self.window, self.margin, hop, self.chunk_frames, self.max_windows)

    def windows(self, source: Callable[[int, int], np.ndarray], samples: int, hop: int | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
        """(start frame, probabilities `(n_classes,)`) of every window of a recording of `samples`
        samples, chunk by chunk; `source(start, stop)` gives its samples [start, stop), zeros outside."""
        def run(chunk: Chunk) -> tuple[Chunk, np.ndarray]:
            return chunk, self.run(source(chunk.start, chunk.stop)[None], chunk.starts)[0]

        for chunk, probabilities in ordered_map(run, self.chunks(samples, hop), self.workers):
            yield from zip((chunk.first + chunk.starts).tolist(), probabilities)

    def source(self, item, sample_rate: int | None) -> tuple[Callable[[int, int], np.ndarray], int]:
        """(samples [start, stop) of the input at `sr`, its length): a file longer than a chunk is read
        stretch by stretch (`read_segment`), anything else decoded whole."""
        if isinstance(item, (str, Path)):
            wave, samples = read_audio_if(item, self.sr, lambda n: frame_count(n, self.hop_length) <= self.chunk_frames)
            if wave is None:
                return (lambda start, stop: read_segment(item, self.sr, start, stop)), samples
        else:
            wave = samples_array(item, sample_rate, self.sr)
        return (lambda start, stop: cut(wave, start, stop)), len(wave)

    def score(self, inputs: Sequence, sample_rate: int | None = None, hop: int | None = None,
              keep_windows: bool = False) -> Iterator[Scored]:
        """One `Scored` per input (a path, or a sample array at `sample_rate`), in order; an input that
        cannot be read gets its `error` and the others go on. Short ones are batched (module docstring); with
        `workers` > 1 the blocks are read and scored side by side, in that many threads."""
        def score_items(items: list[tuple[int, object]]) -> list[Scored]:
            results, block, held = [], [], 0  # held: decoded samples in the block
            for number, item in items:
                block.append(self._pending(number, item, sample_rate, hop))
                held += len(block[-1].wave) if block[-1].wave is not None else 0
                if held > BLOCK_SAMPLES:
                    results += self._score_block(block, hop, keep_windows)
                    block, held = [], 0
            return results + list(self._score_block(block, hop, keep_windows))

        items = enumerate(inputs)
        blocks = iter(lambda: list(islice(items, BLOCK_CLIPS)), [])
        for results in ordered_map(score_items, blocks, self.workers):
            yield from results

    def _pending(self, number: int, item, sample_rate: int | None, hop: int | None) -> _Pending:
        """`item` decoded (a short recording: its only chunk's samples) or opened (a longer one)."""
        is_file = isinstance(item, (str, Path))
        pending = _Pending(Scored(name=str(item) if is_file else f"array {number}"))
        try:
            source, samples = self.source(item, sample_rate)
            pending.result.duration = samples / self.sr
            first = list(islice(self.chunks(samples, hop), 2))
            if len(first) == 1:
                pending.chunk, pending.wave = first[0], source(first[0].start, first[0].stop)
            else:
                pending.source, pending.samples = source, samples
        except Exception as error:  # noqa: BLE001 - reported with its reason; the other inputs go on
            pending.result.error = _reason(error)
        return pending

    def short_batches(self, short: list[tuple[np.ndarray, np.ndarray]]) -> list[list[int]]:
        """Which of a block's short chunks `[(waveform (samples,), starts (n_windows,))]` go through
        `score_short` together (their indices): those of one length and window starts, at most `max_windows`
        windows and the longest chunk's samples a batch (the sizes an ONNX file is checked for)."""
        shapes: dict[tuple, list[int]] = {}
        for index, (wave, starts) in enumerate(short):
            shapes.setdefault((len(wave), starts.tobytes()), []).append(index)
        batches = []
        for same in shapes.values():
            wave, starts = short[same[0]]
            rows = max(1, min(self.max_windows // len(starts), self.largest_chunk // len(wave)))
            batches += [same[at: at + rows] for at in range(0, len(same), rows)]
        return batches

    def score_short(self, short: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """A batch of `short_batches`: `[(waveform, starts)]` of one shape -> each one's window probabilities
        `(n_windows, n_classes)`, from one call of `run` with the chunks as its rows."""
        return list(self.run(np.stack([wave for wave, _ in short]), short[0][1]))

    def _score_block(self, block: list[_Pending], hop: int | None, keep_windows: bool) -> Iterator[Scored]:
        """Score a block's short chunks in batches (`short_batches`), then each longer recording; yield in order."""
        short = [pending for pending in block if pending.wave is not None and not pending.result.error]
        for batch in self.short_batches([(pending.wave, pending.chunk.starts) for pending in short]):
            try:
                probabilities = self.score_short([(short[i].wave, short[i].chunk.starts) for i in batch])
            except Exception as error:  # noqa: BLE001 - these inputs get the reason; the others go on
                for i in batch:
                    short[i].result.error = _reason(error)
                continue
            for i, window_probabilities in zip(batch, probabilities):
                short[i].windows = list(zip((short[i].chunk.first + short[i].chunk.starts).tolist(), window_probabilities))
        for pending in block:
            result = pending.result
            try:
                if not result.error and pending.source is not None:
                    pending.windows = list(self.windows(pending.source, pending.samples, hop))
                if not result.error:
                    windows = pending.windows
                    result.probabilities = sliding.vote(np.stack([p for _, p in windows]), [len(windows)])[0]
                    result.windows = windows if keep_windows else []
            except Exception as error:  # noqa: BLE001 - reported with its reason; the other inputs go on
                result.error = _reason(error)
            yield result


def ordered_map(function: Callable, items: Iterable, workers: int) -> Iterator:
    """`map(function, items)` run in `workers` threads, in order, with at most `workers` items ahead of the one
    yielded (memory stays that of `workers` items; `items` is read as the results are taken)."""
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        running: deque = deque()
        for item in items:
            running.append(pool.submit(function, item))
            if len(running) > workers:
                yield running.popleft().result()
        while running:
            yield running.popleft().result()


def _reason(error: Exception) -> str:
    """An error as the one line a `Scored` carries."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
