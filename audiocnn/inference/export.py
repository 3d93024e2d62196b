"""`audiocnn export --model SOURCE --format onnx|torchscript --output FILE`.

The file holds the path from a chunk of mono float32 waveform at the model's `features.sr` to
the probabilities of the windows it holds (`inference.graph.ChunkScorer`, the module eager
scoring runs: CQT, log, float16 rounding, windows, model with its peak normalisation, softmax).
Inputs:
    waveform               (batch, samples)     a chunk with `margin_samples` of context each side:
                                                samples [f0 * hop_length - margin, f1 * hop_length + margin)
                                                of the recording for its frames [f0, f1), zeros beyond it
    starts                 (n_windows,) int64   window start frames, relative to f0 (any hop)
Output:
    window_probabilities   (batch, n_windows, n_classes)
    frame_probabilities    (batch, n_windows, n_out, n_classes)   an events model only (docs/events.md):
                                                the windows' frame outputs; the decoding into events
                                                (stored in the metadata's `events.post_processing`)
                                                runs outside the graph, in `inference.event_stream`
A recording is scored chunk by chunk (`inference.chunks`: the windows, the chunks, their margins),
so memory does not grow with its duration; its probabilities are the mean of its windows'. The
bundle's temperature (`trainer.calibrate=temperature`) is a constant of the graph, and so are the
test-time views given with `--tta-pitch-bins` / `--tta-time-frames` (default: none).
Metadata (`audiocnn`: JSON with `format`, `classes`, `features`, `margin_samples`,
`window_hop_frames` (the default hop: half a window), `temperature`, `tta`, `task` and, for a
multi-label model, `thresholds`; for an events model also `events`: time stride, frame seconds, decoding): ONNX `metadata_props`, TorchScript extra file `audiocnn.json`.
A multi-label model's graph ends in a sigmoid per class instead of the softmax.
`--quantize int8` (ONNX only) writes the same graph with the model body in int8, calibrated on the
recordings `--calibration` names (`inference.quantize`; metadata `"quantization": "int8"`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from audiocnn import atomic
from audiocnn.features import sliding
from audiocnn.inference.export_format import EXPORT_FORMAT, INPUTS, METADATA_KEY, OUTPUTS, output_names
from audiocnn.inference.predictor import Predictor
from audiocnn.inference.predict import add_tta_arguments, tta_arguments

FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("int8",)  # inference.quantize.QUANTIZATIONS (imported there only when asked: onnxruntime)


def metadata(predictor: Predictor) -> str:
    return json.dumps({"format": EXPORT_FORMAT, "classes": predictor.classes, "features": predictor.features,
                       "margin_samples": predictor.margin, "window_hop_frames": sliding.default_hop(predictor.window),
                       "temperature": predictor.temperature, "task": predictor.task,
                       **({"thresholds": predictor.thresholds} if predictor.thresholds else {}),
                       **({"events": predictor.event_record} if predictor.event_record else {}),
                       "tta": {"pitch_bins": list(predictor.views.pitch_bins),
                               "time_frames": list(predictor.views.time_frames)}})


def export_model(source: str | Path, fmt: str, output: str | Path, tta: dict | None = None,
                 quantize: str | None = None, calibration: str | Path | list[str] | None = None) -> Path:
    """Write the model at `source` as `fmt` to `output` (atomically), with the test-time views `tta`
    (`Predictor`'s; None: none); returns the path. `quantize="int8"` (ONNX only): the model body in
    int8, calibrated on the recordings `calibration` names (a folder, files, a glob, a list)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt}: allowed: {', '.join(FORMATS)}")
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise ValueError(f"--quantize={quantize}: allowed: {', '.join(QUANTIZATIONS)}")
        if fmt != "onnx":
            raise ValueError(f"--quantize {quantize} needs --format onnx (onnxruntime's quantization); "
                             f"--format {fmt} is written in fp32 only")
        if not calibration:
            raise ValueError(f"--quantize {quantize} needs --calibration: a folder (or files, a glob, a list, a "
                             "prepared manifest.csv) of recordings like the ones the model will score")
    predictor = Predictor.load(source, tta=tta)
    module = predictor.graph()
    # Any chunk length and any number of windows work: sizes are traced as operations on the inputs' shapes.
    example = (torch.zeros(1, (predictor.window + 1) * predictor.hop_length + 2 * predictor.margin),
               torch.tensor([0, 1], dtype=torch.int64))
    output = Path(output)
    with atomic.atomic_path(output) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic, which it records as ops
        if fmt == "onnx" and quantize:
            from audiocnn.inference.quantize import quantize_int8

            fp32 = Path(f"{tmp}.fp32.onnx")
            try:
                _export_onnx(module, example, fp32, metadata(predictor))
                quantize_int8(fp32, tmp, calibration)
            finally:
                fp32.unlink(missing_ok=True)
        elif fmt == "onnx":
            _export_onnx(module, example, tmp, metadata(predictor))
        else:
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={f"{METADATA_KEY}.json": metadata(predictor)})
    return output


def _export_onnx(module: nn.Module, example: tuple[Tensor, Tensor], path: Path, meta: str) -> None:
    import onnx

    outputs = output_names(json.loads(meta))
    torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=INPUTS,
                      output_names=outputs, dynamic_axes={"waveform": {0: "batch", 1: "samples"},
                                                          "starts": {0: "windows"},
                                                          **{name: {0: "batch", 1: "windows"} for name in outputs}})
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta
    onnx.save(model, str(path))


def main(argv: list[str]) -> int:
    """`audiocnn export --model SOURCE --format onnx|torchscript --output FILE`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="audiocnn export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder, model.pt, runs:/<id>/model, models:/<name>/<v>")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="the file to write (e.g. model.onnx, model.ts)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ and models:/ sources")
    parser.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="int8: the model body quantized by onnxruntime (ONNX only; needs --calibration)")
    parser.add_argument("--calibration", nargs="+", metavar="AUDIO",
                        help="--quantize: recordings to calibrate on (folder, files, glob, list, or a prepared "
                             "manifest.csv: its train rows); at most 64, spread evenly")
    add_tta_arguments(parser)
    args = parser.parse_args(argv)
    from audiocnn.inference.predict import use_tracking

    use_tracking(args.model, args.tracking_uri)
    path = export_model(args.model, args.format, args.output, tta_arguments(args), args.quantize, args.calibration)
    kind = f"{args.format}, {args.quantize}" if args.quantize else args.format
    print(f"export: {args.model} -> {path} ({kind}; inputs: mono float32 waveforms (batch, samples) at "
          "the model's features.sr, chunked with margins, and window starts; output: " + ", ".join(OUTPUTS)
          + (", frame_probabilities (an events model)" if Predictor.load(args.model).event_record else "") + ")",
          file=sys.stderr)
    return 0
