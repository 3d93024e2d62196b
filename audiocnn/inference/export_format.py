"""What a file `audiocnn export` writes holds, read by the exporter (`export`), the loaders
(`exported`) and the file check (`onnx_check`): its input and output names, the metadata key and
the format number. Nothing here imports PyTorch or onnxruntime."""

METADATA_KEY = "audiocnn"  # ONNX metadata_props key / TorchScript extra file: {"classes", "features", ...}
EXPORT_FORMAT = 2  # 2: the graph scores a chunk (waveform with margins, window starts); 1 took whole recordings
INPUTS = ["waveform", "starts"]
OUTPUTS = ["window_probabilities"]
CHUNK_WINDOWS = 64  # most windows per call of the graph
