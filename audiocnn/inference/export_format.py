"""What a file `audiocnn export` writes holds, read by the exporter (`export`), the loaders
(`exported`) and the file check (`onnx_check`): its input and output names, the metadata key and
the format number. Nothing here imports PyTorch or onnxruntime."""

METADATA_KEY = "audiocnn"  # ONNX metadata_props key / TorchScript extra file: {"classes", "features", ...}
EXPORT_FORMAT = 2  # 2: the graph scores a chunk (waveform with margins, window starts); 1 took whole recordings
INPUTS = ["waveform", "starts"]
OUTPUTS = ["window_probabilities"]
FRAME_OUTPUT = "frame_probabilities"  # an events model's graph also gives (batch, windows, n_out, n_classes)


def output_names(metadata: dict) -> list[str]:
    """The graph outputs of an exported file with this metadata: an events model's carries its frame outputs."""
    return [*OUTPUTS, FRAME_OUTPUT] if metadata.get("task") == "events" else list(OUTPUTS)
CHUNK_WINDOWS = 64  # most windows per call of the graph
