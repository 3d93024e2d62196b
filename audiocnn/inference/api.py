"""The Python API: `from audiocnn import load_model`; `load_model(source).predict(...)` -> records.

A record per input (what `audiocnn predict` prints and writes, and what the pyfunc builds on):
    {"path": ..., "label": best class, "confidence": its probability, "duration": seconds,
     "top_k": [[label, probability], ...] best first, "probabilities": {class: p, ...},
     "timeline": [{"start_s", "end_s", "label", "probability"}, ...]   with timeline=True,
     "error": reason}                                   for an input that has no answer (then no label)
An events model (`task: events`, docs/events.md) also answers `events(inputs)`: per input its events,
`{"path", "events": [{"onset", "offset", "label", "score"}, ...]}`, decoded with the decoding stored
in the model; `stream_events(input)` yields them as a long recording is scored, chunk by chunk.
A multi-label model (`task: multilabel`) adds "labels": [[label, probability], ...], every class
at or over its threshold (fitted on validation, stored in model.pt and in the export), most
probable first; each timeline window gets its own "labels". Its probabilities are each class's
own (a sigmoid per class): they need not sum to 1.

An answer is finite or absent (`Model.record`, for every backend alike): probabilities that
are NaN or infinite (a recording too loud for float32, NaN weights, a tiny temperature), outside
[0, 1], or (single-label) not summing to 1 (within `PROBABILITY_TOLERANCE`; an exported file is not trusted to
give probabilities) are an `error`, never a label. So is a recording shorter than one hop of the
front-end (`features.hop_length` samples at `features.sr`; 0 frames included): a clip that
short holds no frame of its own. A clip shorter than a window but at least one hop long is
scored padded, as evaluate scores it.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from audiocnn.errors import BundleError

TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")
TRUST_OPTION = "--trust-torchscript (Python: load_model(..., trust_code=True))"
PROBABILITY_TOLERANCE = 1e-3  # how far an answer's probabilities may be from [0, 1] and from summing to 1


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive, read from its zip directory only (nothing is
    unpickled or run): TorchScript holds `code/` (its Python source) or `constants.pkl`; a
    `model.pt` bundle holds only `data.pkl` and tensors. A file that cannot be read as a zip is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any("/code/" in name or name.startswith("code/") or name.endswith("constants.pkl") for name in names)


def refuse_untrusted_torchscript(path: Path) -> None:
    """TorchScript is a program for PyTorch's interpreter: its `__setstate__` runs while it loads and
    its `forward` may do anything, so a file is loaded as TorchScript only when the user says they
    trust it. Checked before anything is read beyond the zip directory, whatever the file is named."""
    if path.suffix in TORCHSCRIPT_SUFFIXES or (path.is_file() and is_torchscript(path)):
        raise BundleError(f"{path}: a TorchScript file is a program, and loading it runs its code; "
                          f"load it only if you exported it yourself, with {TRUST_OPTION}. "
                          "ONNX files and model.pt bundles are data and need no such option")


class Model:
    """A trained model ready to classify recordings (a bundle, or an exported ONNX / TorchScript file)."""

    def __init__(self, backend, source: str):
        self.backend, self.source = backend, source
        self.classes: list[str] = backend.classes
        self.features: dict = backend.features
        # multi-label: each class's threshold (`data.task`); None for a single-label model
        self.thresholds: list[float] | None = backend.thresholds

    @classmethod
    def load(cls, source: str | Path, device: str = "cpu", batch_size: int = 64, tta: dict | None = None,
             trust_code: bool = False) -> "Model":
        path = Path(str(source))
        if not trust_code:
            refuse_untrusted_torchscript(path)
        torchscript = path.suffix in TORCHSCRIPT_SUFFIXES or (path.is_file() and is_torchscript(path))
        if (path.suffix == ".onnx" or torchscript) and tta is not None:
            raise ValueError(f"{source}: the test-time views of an exported model are the ones it was exported "
                             "with (audiocnn export --tta-...); pass tta with a model.pt source")
        if path.suffix == ".onnx":
            from audiocnn.inference.exported import OnnxBackend

            return cls(OnnxBackend(path), str(source))
        if torchscript:
            from audiocnn.inference.exported import TorchScriptBackend

            return cls(TorchScriptBackend(path), str(source))
        from audiocnn.inference.predictor import Predictor

        return cls(Predictor.load(source, device=device, batch_size=batch_size, tta=tta), str(source))

    @property
    def window_seconds(self) -> float:
        return (int(self.features["window_frames"]) - 1) * int(self.features["hop_length"]) / int(self.features["sr"])

    def iter_predict(self, inputs: Sequence, sample_rate: int | None = None, top_k: int = 3, timeline: bool = False,
                     hop_seconds: float | None = None) -> Iterator[dict]:
        """`predict`, one record at a time (in input order) as soon as it is known."""
        if any(not isinstance(item, (str, Path)) for item in inputs) and not sample_rate:
            raise ValueError("sample_rate: needed for sample arrays (the rate of the arrays, in Hz)")
        hop = None
        if hop_seconds is not None:
            check_hop_seconds(hop_seconds)
            hop = max(1, round(hop_seconds * int(self.features["sr"]) / int(self.features["hop_length"])))
        for scored in self.backend.score(list(inputs), sample_rate=sample_rate, hop=hop, keep_windows=timeline):
            yield self.record(scored, top_k, timeline)

    def predict(self, inputs: Sequence, sample_rate: int | None = None, top_k: int = 3, timeline: bool = False,
                hop_seconds: float | None = None) -> list[dict]:
        """Records for `inputs` (paths, or sample arrays `(samples,)` / `(samples, channels)` at
        `sample_rate`); see the module docstring. `hop_seconds`: the window hop (default half a window)."""
        return list(self.iter_predict(inputs, sample_rate, top_k, timeline, hop_seconds))

    def record(self, scored, top_k: int, timeline: bool) -> dict:
        """The record of one backend answer; an answer that is not one (see the module docstring)
        becomes an `error`."""
        record = {"path": scored.name, "duration": round(float(scored.duration), 4)}
        error = scored.error or self.too_short(scored.duration)
        multilabel = self.thresholds is not None
        if not error:
            probabilities = np.asarray(scored.probabilities, dtype=float)
            error = answer_problem(probabilities, len(self.classes), multilabel=multilabel)
            for _, window in scored.windows if timeline and not error else []:
                if error := answer_problem(np.asarray(window, dtype=float), len(self.classes), "window ", multilabel):
                    break
        if error:
            return {**record, "error": error}
        order = np.argsort(-probabilities, kind="stable")
        record.update(label=self.classes[order[0]], confidence=float(probabilities[order[0]]),
                      top_k=[[self.classes[i], float(probabilities[i])] for i in order[:top_k]],
                      probabilities=dict(zip(self.classes, map(float, probabilities))))
        if multilabel:
            record["labels"] = self.label_set(probabilities)
        if timeline:
            step = int(self.features["hop_length"]) / int(self.features["sr"])
            record["timeline"] = [{"start_s": round(start * step, 4),
                                   "end_s": round(min(start * step + self.window_seconds, scored.duration), 4),
                                   "label": self.classes[int(np.argmax(p))], "probability": float(np.max(p)),
                                   **({"labels": self.label_set(np.asarray(p, dtype=float))} if multilabel else {})}
                                  for start, p in scored.windows]
        return record

    def stream_events(self, item, sample_rate: int | None = None) -> Iterator:
        """An events model's events (`data.event_decoding.Detection`: onset, offset, label, score) in one input
        (a path, or a sample array at `sample_rate`), in onset order, as the recording is scored chunk by
        chunk (`inference.event_stream`, every backend: memory flat in the duration). `ValueError` in one line
        for a model that is not an events model, or an input that cannot be read or is too short."""
        if not isinstance(item, (str, Path)) and not sample_rate:
            raise ValueError("sample_rate: needed for sample arrays (the rate of the arrays, in Hz)")
        return self.backend.events(item, sample_rate)

    def events(self, inputs: Sequence, sample_rate: int | None = None) -> list[dict]:
        """One record per input: `{"path", "events": [{"onset", "offset", "label", "score"}, ...]}` (seconds,
        onset order), or `{"path", "error"}` for an input without an answer (the others go on)."""
        records = []
        for number, item in enumerate(inputs):
            name = str(item) if isinstance(item, (str, Path)) else f"array {number}"
            try:
                events = [{"onset": round(d.onset, 4), "offset": round(d.offset, 4), "label": d.label,
                           "score": round(d.score, 6)} for d in self.stream_events(item, sample_rate)]
                records.append({"path": name, "events": events})
            except Exception as error:  # noqa: BLE001 - reported with its reason; the other inputs go on
                records.append({"path": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"})
        return records

    def label_set(self, probabilities: np.ndarray) -> list[list]:
        """A multi-label model's answer: `[[class, probability], ...]` of every class at or over its
        threshold, most probable first (empty when none is)."""
        over = [i for i in np.argsort(-probabilities, kind="stable") if probabilities[i] >= self.thresholds[i]]
        return [[self.classes[i], float(probabilities[i])] for i in over]

    def too_short(self, duration: float) -> str:
        """Why a clip of `duration` s has nothing to classify ('' if it has): fewer samples than
        one hop of the front-end."""
        sr, hop = int(self.features["sr"]), int(self.features["hop_length"])
        samples = round(float(duration) * sr)
        if samples >= hop:
            return ""
        if samples == 0:
            return "empty: no audio samples"
        return (f"too short: {samples} samples at {sr} Hz, fewer than one hop of the front-end "
                f"(features.hop_length={hop}); nothing to classify")


def answer_problem(probabilities: np.ndarray, n_classes: int, what: str = "", multilabel: bool = False) -> str:
    """Why `probabilities` `(n_classes,)` is not an answer ('' if it is): non-finite values,
    values outside [0, 1], or (single-label: `multilabel` false) a sum other than 1 (within
    `PROBABILITY_TOLERANCE`)."""
    if probabilities.shape != (n_classes,):
        return f"the model answered {what}scores of shape {probabilities.shape} for {n_classes} classes"
    finite = np.isfinite(probabilities)
    if not finite.all():
        return (f"the model's {what}probabilities are not finite ({n_classes - int(finite.sum())} of {n_classes} "
                "NaN or infinite): no answer (a recording too loud for float32 arithmetic, or a model file "
                "with non-finite weights or temperature)")
    low, high, total = probabilities.min(), probabilities.max(), probabilities.sum()
    if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE:
        return (f"the model's {what}scores are not probabilities: they range from {low:.4g} to {high:.4g}, "
                "outside [0, 1]: no answer")
    if not multilabel and abs(total - 1) > PROBABILITY_TOLERANCE:
        return f"the model's {what}probabilities sum to {total:.4g}, not 1: no answer"
    return ""


def check_hop_seconds(hop_seconds, name: str = "hop_seconds") -> None:
    """`ValueError` naming `name` unless `hop_seconds` is a finite positive number."""
    try:
        good = math.isfinite(float(hop_seconds)) and float(hop_seconds) > 0
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ValueError(f"{name}={hop_seconds}: must be a finite positive number of seconds")


def load_model(source: str | Path, device: str = "cpu", batch_size: int = 64, tta: dict | None = None,
               trust_code: bool = False) -> Model:
    """`source`: a model folder, `model.pt`, `runs:/<id>/model`, `models:/<name>/<version|alias>`, a
    run id, or an exported `.onnx` (onnxruntime) or TorchScript file. `batch_size`: windows per call.
    `tta`: test-time views `{"pitch_bins": [-2, 0, 2], "time_frames": [0, 8]}` (None: none); the
    model's temperature (`model.pt`) is always applied. `trust_code`: load a TorchScript file
    (a program: it runs code as it loads); without it such a file is refused, whatever its name,
    before it is read (`BundleError`)."""
    return Model.load(source, device=device, batch_size=batch_size, tta=tta, trust_code=trust_code)
