"""audiocnn: audio classification with Constant-Q spectrograms and CNN / CRNN models.

`from audiocnn import load_model`; `load_model(source).predict(paths_or_arrays, sample_rate=...)`.
"""


def __getattr__(name: str):
    # Imported on first use, so `import audiocnn` (and the onnxruntime path) stays light.
    if name == "load_model":
        from audiocnn.inference.api import load_model

        return load_model
    raise AttributeError(f"module 'audiocnn' has no attribute {name!r}")
