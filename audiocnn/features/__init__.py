"""Features: the Constant-Q front-end (nnAudio) and the sharded float16 feature store."""
