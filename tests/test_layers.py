"""The package's layers import downwards only, with no cycles (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

LAYERS = "errors,atomic,data,features,models,tracking,training,evaluation,inference"


def test_imports_go_down_the_layers_only():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "import_layers.py"), str(REPO / "audiocnn"),
                             "--layers", LAYERS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problem(s)" in result.stdout
