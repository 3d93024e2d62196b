"""Data: dataset sources, audio I/O, the manifest and its splits (the prepare stage)."""
