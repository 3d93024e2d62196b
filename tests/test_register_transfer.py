"""benchmarks/register_transfer.py at tiny settings: one real training on one register, scored on both."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys

import pandas as pd

from tests.conftest import REPO


@pytest.mark.slow  # two trainings, about 25 s (make test-slow, CI)
def test_register_transfer_trains_on_one_register_and_scores_both(tmp_path):
    results = tmp_path / "results.json"
    command = [sys.executable, "benchmarks/register_transfer.py", "--models", "crnn_gru:max_centroid",
               "--augment", "none", "--directions", "low", "--clips-per-class", "5", "--test-clips-per-class", "2",
               "--epochs", "1", "--work", str(tmp_path / "work"), "--results", str(results),
               "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "features.batch_size=8",
               "trainer.batch_size=8", "features.num_workers=0"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(results.read_text())
    assert result["registers"] == {"low": [40, 61], "high": [62, 84]}
    (run,) = result["runs"]
    assert (run["row"], run["augment"], run["train"]) == ("crnn_gru:max_centroid", "none", "low")
    assert run["same"]["clips"] == run["transposed"]["clips"] == 2 * 8  # equal-sized test sets
    assert all(0 <= run[w][k] <= 1 for w in ("same", "transposed") for k in ("accuracy", "order_only"))
    manifest = pd.read_csv(tmp_path / "work" / "prepared" / "low" / "manifest.csv")
    register = manifest["path"].map(lambda p: p.split("/")[-3])
    assert set(register[manifest["split"] != "test"]) == {"low"}  # trains and validates on one register
    assert register[manifest["split"] == "test"].value_counts().to_dict() == {"low": 16, "high": 16}
    assert "| `crnn_gru:max_centroid` | `none` |" in done.stdout
