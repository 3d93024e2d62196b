"""audiocnn."""
