"""Scoring with an exported model file: ONNX (onnxruntime) or TorchScript.

The file holds the whole path from waveform to probabilities (`inference.graph.ClipClassifier`,
exported by `audiocnn export`) and, as metadata, the class names and feature settings. Here
only the decoding around it runs: read, downmix, resample to the file's `sr`
(`audiocnn.data.audio`), then one call per recording (the graph takes any length; its sliding
windows and their vote are inside). The window hop is the exported one (half a window).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from audiocnn.data.audio import read_audio, samples_array
from audiocnn.inference.results import Scored

METADATA_KEY = "audiocnn"  # ONNX metadata_props key / TorchScript extra file: {"classes", "features", ...}


class _ExportedBackend:
    def __init__(self, metadata: dict):
        self.classes: list[str] = list(metadata["classes"])
        self.features: dict = dict(metadata["features"])
        self.sr = int(self.features["sr"])
        self.hop = max(int(self.features["window_frames"]) // 2, 1)

    def run(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def score(self, inputs: Sequence, sample_rate: int | None = None, hop: int | None = None,
              keep_windows: bool = False) -> Iterator[Scored]:
        if hop is not None and hop != self.hop:
            raise ValueError(f"the window hop of an exported model is fixed ({self.hop} frames); "
                             "use the model.pt bundle for another hop")
        for number, item in enumerate(inputs):
            is_file = isinstance(item, (str, Path))
            result = Scored(name=str(item) if is_file else f"array {number}")
            try:
                wave = read_audio(item, self.sr) if is_file else samples_array(item, sample_rate, self.sr)
                result.duration = len(wave) / self.sr
                probabilities, windows, starts, weights = self.run(wave[None].astype(np.float32))
                result.probabilities = probabilities[0]
                if keep_windows:
                    result.windows = [(int(s), p) for s, p, w in zip(starts, windows[0], weights) if w > 0]
            except Exception as error:  # noqa: BLE001 - reported with its reason; the other inputs go on
                result.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            yield result


class OnnxBackend(_ExportedBackend):
    """An `.onnx` file run by onnxruntime (no PyTorch model code involved)."""

    def __init__(self, path: Path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{path}: not an ONNX file exported by audiocnn (no {METADATA_KEY!r} metadata)")
        super().__init__(json.loads(meta[METADATA_KEY]))

    def run(self, waveform: np.ndarray):
        return tuple(self.session.run(None, {"waveform": waveform}))


class TorchScriptBackend(_ExportedBackend):
    """A TorchScript file written by `audiocnn export --format torchscript`.

    TorchScript is code for PyTorch's interpreter: load only files you exported yourself
    (ONNX files are data for onnxruntime's graph interpreter).
    """

    def __init__(self, path: Path):
        import torch

        extra = {f"{METADATA_KEY}.json": ""}
        self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        if not extra[f"{METADATA_KEY}.json"]:
            raise ValueError(f"{path}: not a TorchScript file exported by audiocnn (no {METADATA_KEY}.json)")
        super().__init__(json.loads(extra[f"{METADATA_KEY}.json"]))

    def run(self, waveform: np.ndarray):
        import torch

        with torch.inference_mode():
            return tuple(t.numpy() for t in self.module(torch.from_numpy(waveform)))
