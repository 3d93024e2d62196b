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


def test_the_architecture_page_names_every_module():
    """docs/architecture.md's layer table lists every module of audiocnn/ (a dataset adapter under
    `data/sources/*`, a validation module by its name in the orchestration row)."""
    table = [line for line in (REPO / "docs" / "architecture.md").read_text().splitlines() if line.startswith("| ")]
    text = "\n".join(table)
    missing = []
    for path in sorted((REPO / "audiocnn").rglob("*.py")):
        relative = path.relative_to(REPO / "audiocnn").as_posix()
        if path.name == "__init__.py" and relative != "tracking/__init__.py":
            continue
        named = (f"`{relative}`" in text or (relative.startswith("data/sources/") and "`data/sources/*`" in text)
                 or (relative.startswith("validation/") and f"`{path.name}`" in text))
        if not named:
            missing.append(relative)
    assert not missing, f"docs/architecture.md's layer table does not name: {missing}"
