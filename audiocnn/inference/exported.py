"""Scoring with an exported model file: ONNX (onnxruntime) or TorchScript.

The file holds the path from a chunk of waveform to its windows' probabilities
(`inference.graph.ChunkScorer`, exported by `audiocnn export`) and, as metadata, the class names,
the feature settings and the chunks' margin. The backends here only run that graph (`run`); the
decoding, the chunks, the batching and the vote around it are `inference.backend.Backend`'s, as for
`Predictor`. An ONNX file is scored by several calls side by side (`onnx_check.session_threads`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from audiocnn.errors import BundleError
from audiocnn.inference.backend import Backend
from audiocnn.inference.export_format import CHUNK_WINDOWS, FRAME_OUTPUT, METADATA_KEY, OUTPUTS, output_names
from audiocnn.inference.onnx_check import check_metadata, session_threads


class _ExportedBackend(Backend):
    """An exported file's backend: its classes, feature settings and chunk margin from its metadata."""

    def __init__(self, metadata: dict, where: str = "exported model"):
        metadata = check_metadata(metadata, where)  # classes and features as a model.pt's (features.budget)
        super().__init__(metadata["classes"], metadata["features"], metadata["margin_samples"], CHUNK_WINDOWS,
                         metadata, kind="file")
        self.outputs = output_names(metadata)


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
