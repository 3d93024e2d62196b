"""Scoring with an exported model file: ONNX (onnxruntime) or TorchScript.

The file holds the path from a chunk of waveform to its windows' probabilities
(`inference.graph.ChunkScorer`, exported by `audiocnn export`) and, as metadata, the class names,
the feature settings and the chunks' margin. Here only the decoding and the chunking around it
run, as `Predictor` does them: read, downmix, resample to the file's `sr` (`audiocnn.data.audio`;
a recording longer than `features.chunk_seconds` is read stretch by stretch), then one call per
chunk of windows (`inference.chunks`: the sliding windows, hop half a window unless asked,
and the chunks with their margins), so memory does not grow with the recording's duration. A
recording's probabilities are the mean of its windows'.

Short recordings (one chunk each: every FSDD clip) are scored several in one call: the inputs are
read in blocks of at most `BLOCK_CLIPS` recordings and `BLOCK_SAMPLES` samples, and the chunks
of a block that have the same length and window starts (recordings of the same frame count) go
through the graph as the rows of one batch. Each row is the chunk it would be alone (the graph's
rows are independent), so the answers are those of one call per recording; a batch holds at most
`CHUNK_WINDOWS` windows and the samples of the largest chunk, the sizes the file check allows for
(`onnx_check.chunk_shapes`).

An ONNX file is scored by `workers` calls side by side (`onnx_check.session_threads`): blocks, and a
long recording's chunks, go to that many threads (`ordered_map`), each reading its files and running
the graph while the others do; the answers keep the inputs' order.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from audiocnn.data.audio import read_audio_if, read_segment, samples_array
from audiocnn.errors import BundleError
from audiocnn.features import sliding
from audiocnn.inference.chunks import Chunk, Scored, chunks, cut, frame_count
from audiocnn.data.event_decoding import Detection
from audiocnn.inference.event_stream import stream_events
from audiocnn.inference.export_format import CHUNK_WINDOWS, FRAME_OUTPUT, METADATA_KEY, OUTPUTS, output_names
from audiocnn.inference.onnx_check import check_metadata, chunk_shapes, session_threads
from audiocnn.data.task import EVENTS, MULTICLASS, post_processing_of, thresholds_of

BLOCK_CLIPS = 64  # recordings a block reads before its short chunks are batched and scored
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


class _ExportedBackend:
    workers = 1  # blocks (and a long recording's chunks) decoded and scored at once, each in a thread

    def __init__(self, metadata: dict, where: str = "exported model"):
        metadata = check_metadata(metadata, where)  # classes and features as a model.pt's (features.budget)
        self.classes: list[str] = list(metadata["classes"])
        self.features: dict = dict(metadata["features"])
        self.sr = int(self.features["sr"])
        self.margin = int(metadata["margin_samples"])
        self.task, self.thresholds = metadata.get("task", MULTICLASS), thresholds_of(metadata, len(self.classes))
        self.event_record = metadata.get("events") if self.task == EVENTS else None
        self.post_processing = post_processing_of(metadata, len(self.classes)) if self.event_record else None
        self.outputs = output_names(metadata)

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """(batch, samples) float32 chunk with margins, (n_windows,) int64 -> (batch, n_windows, n_classes)."""
        raise NotImplementedError

    def run_frames(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """An events model's frame outputs: the same inputs -> (batch, n_windows, n_out, n_classes)."""
        raise NotImplementedError

    def events(self, item, sample_rate: int | None = None) -> Iterator[Detection]:
        """An events model's events in one input (a path, or a sample array at `sample_rate`), streamed as
        `Predictor.events` streams them (`inference.event_stream`), from the file's frame outputs and the
        decoding stored in its metadata. `ValueError` (one line) for a file of another task."""
        if self.event_record is None:
            raise ValueError(f"task={self.task}: events need a model trained for sound event detection "
                             "(task events, docs/events.md); this file answers per clip")
        source, samples = self.source(item, sample_rate)
        return stream_events(samples, self.features, self.event_record, self.classes, self.post_processing,
                             self.margin, self.chunk_frames, CHUNK_WINDOWS,
                             lambda chunk: self.run_frames(source(chunk.start, chunk.stop)[None], chunk.starts)[0])

    def chunks(self, samples: int, hop: int | None) -> Iterator[Chunk]:
        """The chunks of a recording of `samples` samples (`inference.chunks`)."""
        hop_length, window = int(self.features["hop_length"]), int(self.features["window_frames"])
        return chunks(samples, hop_length, window, self.margin, hop, self.chunk_frames, CHUNK_WINDOWS)

    def windows(self, source: Callable[[int, int], np.ndarray], samples: int, hop: int | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
        """(start frame, probabilities `(n_classes,)`) of every window of a recording of `samples`
        samples, chunk by chunk; `source(start, stop)` gives its samples [start, stop), zeros outside."""
        def run(chunk: Chunk) -> tuple[Chunk, np.ndarray]:
            return chunk, self.run(source(chunk.start, chunk.stop)[None], chunk.starts)[0]

        for chunk, probabilities in ordered_map(run, self.chunks(samples, hop), self.workers):
            yield from zip((chunk.first + chunk.starts).tolist(), probabilities)

    @property
    def chunk_frames(self) -> int:
        """Frames decoded and scored at once (`features.chunk_seconds`, as `Predictor`)."""
        seconds = float(self.features.get("chunk_seconds", 60))
        return max(1, int(seconds * self.sr) // int(self.features["hop_length"]))

    def source(self, item, sample_rate: int | None) -> tuple[Callable[[int, int], np.ndarray], int]:
        """(samples [start, stop) of the input at `sr`, its length): a file longer than a chunk is read
        stretch by stretch (`read_segment`), anything else decoded whole."""
        if isinstance(item, (str, Path)):
            hop_length = int(self.features["hop_length"])
            wave, samples = read_audio_if(item, self.sr, lambda n: frame_count(n, hop_length) <= self.chunk_frames)
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

    def _score_block(self, block: list[_Pending], hop: int | None, keep_windows: bool) -> Iterator[Scored]:
        """Score a block's short chunks in batches of one shape, then each longer recording; yield in order."""
        shapes: dict[tuple, list[_Pending]] = {}
        for pending in block:
            if pending.wave is not None and not pending.result.error:
                shapes.setdefault((len(pending.wave), pending.chunk.starts.tobytes()), []).append(pending)
        largest = chunk_shapes({"features": self.features, "margin_samples": self.margin})[0][0]
        for same in shapes.values():
            rows = max(1, min(CHUNK_WINDOWS // len(same[0].chunk.starts), largest // len(same[0].wave)))
            for at in range(0, len(same), rows):
                batch = same[at: at + rows]
                try:
                    probabilities = self.run(np.stack([p.wave for p in batch]), batch[0].chunk.starts)
                except Exception as error:  # noqa: BLE001 - these inputs get the reason; the others go on
                    for pending in batch:
                        pending.result.error = _reason(error)
                    continue
                for pending, rows_probabilities in zip(batch, probabilities):
                    pending.windows = list(zip((pending.chunk.first + pending.chunk.starts).tolist(), rows_probabilities))
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


class OnnxBackend(_ExportedBackend):
    """An `.onnx` file run by onnxruntime (no PyTorch model code involved)."""

    def __init__(self, path: Path):
        from audiocnn.inference.onnx_check import check_onnx, open_session

        # Checked before onnxruntime sees it (inference/onnx_check.py): operators, metadata, every
        # tensor's size for the chunks `windows` sends; the session is made from the checked bytes.
        content, metadata = check_onnx(Path(path))
        self.workers, threads = session_threads()
        self.session = open_session(content, path, threads)
        super().__init__(metadata, str(path))

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.session.run(OUTPUTS, {"waveform": waveform, "starts": starts})[0]

    def run_frames(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.session.run([FRAME_OUTPUT], {"waveform": waveform, "starts": starts})[0]


class TorchScriptBackend(_ExportedBackend):
    """A TorchScript file written by `audiocnn export --format torchscript`.

    TorchScript is code for PyTorch's interpreter: load only files you exported yourself
    (ONNX files are data for onnxruntime's graph interpreter).
    """

    def __init__(self, path: Path):
        import torch

        extra = {f"{METADATA_KEY}.json": ""}
        try:
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        except (RuntimeError, ValueError, OSError) as error:  # not TorchScript, or not a file
            raise BundleError(f"{path}: not a TorchScript file torch can load "
                              f"({(str(error).strip().splitlines() or [type(error).__name__])[0]})") from None
        if not extra[f"{METADATA_KEY}.json"]:
            raise BundleError(f"{path}: not a TorchScript file exported by audiocnn (no {METADATA_KEY}.json)")
        try:
            metadata = json.loads(extra[f"{METADATA_KEY}.json"])
        except (ValueError, RecursionError) as error:
            raise BundleError(f"{path}: its {METADATA_KEY}.json is not JSON ({error})") from None
        super().__init__(metadata, str(path))

    def _outputs(self, waveform: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            answer = self.module(torch.from_numpy(waveform), torch.from_numpy(starts))
        return [t.numpy() for t in (answer if isinstance(answer, (tuple, list)) else (answer,))]

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self._outputs(waveform, starts)[0]

    def run_frames(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        outputs = self._outputs(waveform, starts)
        if len(outputs) < 2:
            raise ValueError("this TorchScript file gives no frame outputs; export the events model again")
        return outputs[1]
