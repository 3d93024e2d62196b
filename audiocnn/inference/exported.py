"""Scoring with an exported model file: ONNX (onnxruntime) or TorchScript.

The file holds the path from a chunk of waveform to its windows' probabilities
(`inference.graph.ChunkScorer`, exported by `audiocnn export`) and, as metadata, the class names,
the feature settings and the chunks' margin. Here only the decoding and the chunking around it
run, as `Predictor` does them: read, downmix, resample to the file's `sr` (`audiocnn.data.audio`;
a recording longer than `features.chunk_seconds` is read stretch by stretch), then one call per
chunk of windows (`inference.chunks`: the sliding windows, hop half a window unless asked,
and the chunks with their margins), so memory does not grow with the recording's duration. A
recording's probabilities are the mean of its windows'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from audiocnn.data.audio import clip_samples, read_audio, read_segment, samples_array
from audiocnn.errors import BundleError
from audiocnn.features import sliding
from audiocnn.inference.chunks import chunks, cut, frame_count
from audiocnn.inference.export_format import CHUNK_WINDOWS, METADATA_KEY, OUTPUTS
from audiocnn.inference.results import Scored
from audiocnn.data.task import MULTICLASS, thresholds_of



class _ExportedBackend:
    def __init__(self, metadata: dict, where: str = "exported model"):
        from audiocnn.inference.onnx_check import check_metadata

        metadata = check_metadata(metadata, where)  # classes and features as a model.pt's (features.budget)
        self.classes: list[str] = list(metadata["classes"])
        self.features: dict = dict(metadata["features"])
        self.sr = int(self.features["sr"])
        self.margin = int(metadata["margin_samples"])
        self.task, self.thresholds = metadata.get("task", MULTICLASS), thresholds_of(metadata, len(self.classes))

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """(batch, samples) float32 chunk with margins, (n_windows,) int64 -> (batch, n_windows, n_classes)."""
        raise NotImplementedError

    def windows(self, source: Callable[[int, int], np.ndarray], samples: int, hop: int | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
        """(start frame, probabilities `(n_classes,)`) of every window of a recording of `samples`
        samples, chunk by chunk; `source(start, stop)` gives its samples [start, stop), zeros outside."""
        hop_length, window = int(self.features["hop_length"]), int(self.features["window_frames"])
        for chunk in chunks(samples, hop_length, window, self.margin, hop, self.chunk_frames, CHUNK_WINDOWS):
            probabilities = self.run(source(chunk.start, chunk.stop)[None], chunk.starts)[0]
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
            samples = clip_samples(item, self.sr)
            if frame_count(samples, int(self.features["hop_length"])) > self.chunk_frames:
                return (lambda start, stop: read_segment(item, self.sr, start, stop)), samples
            wave = read_audio(item, self.sr)
        else:
            wave = samples_array(item, sample_rate, self.sr)
        return (lambda start, stop: cut(wave, start, stop)), len(wave)

    def score(self, inputs: Sequence, sample_rate: int | None = None, hop: int | None = None,
              keep_windows: bool = False) -> Iterator[Scored]:
        for number, item in enumerate(inputs):
            is_file = isinstance(item, (str, Path))
            result = Scored(name=str(item) if is_file else f"array {number}")
            try:
                source, samples = self.source(item, sample_rate)
                result.duration = samples / self.sr
                windows = list(self.windows(source, samples, hop))
                result.probabilities = sliding.vote(np.stack([p for _, p in windows]), [len(windows)])[0]
                if keep_windows:
                    result.windows = windows
            except Exception as error:  # noqa: BLE001 - reported with its reason; the other inputs go on
                result.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            yield result


class OnnxBackend(_ExportedBackend):
    """An `.onnx` file run by onnxruntime (no PyTorch model code involved)."""

    def __init__(self, path: Path):
        from audiocnn.inference.onnx_check import check_onnx, open_session

        # Checked before onnxruntime sees it (inference/onnx_check.py): operators, metadata, every
        # tensor's size for the chunks `windows` sends; the session is made from the checked bytes.
        content, metadata = check_onnx(Path(path))
        self.session = open_session(content, path)
        super().__init__(metadata, str(path))

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.session.run(OUTPUTS, {"waveform": waveform, "starts": starts})[0]


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

    def run(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(waveform), torch.from_numpy(starts)).numpy()
