"""Models: `ConvBlock` building blocks, the `CNN` and `CRNN` families, and `build_model`."""

from audiocnn.models.build import build_model

__all__ = ["build_model"]
