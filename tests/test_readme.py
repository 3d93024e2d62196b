"""The README's quickstart, run command by command as a new user would, in a copy of the project.

The copy's conf/ is shrunk (one epoch, tiny batches) and `recordings/` holds two classes of
short tones recorded by eight "speakers" (`<speaker>_<take>.wav`). Every line of the quickstart's
bash block runs in bash, in order, after `source .venv/bin/activate` (the copy's `.venv` is
a link to the environment running the tests). The two servers (`make ui`, `mlflow models
serve`) are started, asked a question and stopped; the serving port is swapped for a free one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tests.conftest import REPO
from tests.test_e2e import TINY_CONF, copy_project
from tests.test_serving import wait_for
from tests.test_tracking import free_port

pytestmark = pytest.mark.slow

QUICKSTART_CONF = {**TINY_CONF, "trainer/default.yaml": {"max_epochs": 1, "batch_size": 8, "log_every_n_steps": 1},
                   "tracking/mlflow.yaml": {"log_model": True, "export_onnx": False}}


def quickstart_commands(readme: str) -> list[str]:
    """The command lines of the first bash block under '## Quickstart', comments and blanks dropped."""
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def write_recordings(root: Path, seconds: float = 2.0, sr: int = 16000) -> None:
    """root/{low,high}/<speaker>_<take>.wav: tones at 220 / 1760 Hz, 8 speakers x 2 takes."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for label, freq in (("low", 220.0), ("high", 1760.0)):
        (root / label).mkdir(parents=True)
        for speaker in range(8):
            for take in range(2):
                tone = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.01 * speaker) * t) + 0.01 * rng.standard_normal(t.size)
                sf.write(root / label / f"spk{speaker}_{take}.wav", tone.astype(np.float32), sr)


def bash(command: str, cwd: Path, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && {command}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def stop_group(process: subprocess.Popen) -> None:
    """Stop a server started through bash (and make): its whole process group."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_to_end(command: str, cwd: Path, env: dict, timeout: int = 900) -> str:
    process = bash(command, cwd, env)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"README command failed: {command}\n{output[-4000:]}"
    return output


def test_every_readme_quickstart_command_runs_as_written(tmp_path):
    commands = quickstart_commands((REPO / "README.md").read_text())
    assert commands[0] == "source .venv/bin/activate" and any("audiocnn predict" in c for c in commands)
    project = copy_project(tmp_path / "project", QUICKSTART_CONF)
    shutil.copy(REPO / "Makefile", project / "Makefile")
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    os.utime(project / "pyproject.toml", (0, 0))  # older than the environment's install stamp: no reinstall
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)
    write_recordings(project / "recordings")
    write_recordings(project / "new_recordings" / "unsorted", seconds=1.0)
    env = {**os.environ, "PYTHONPATH": str(project)}
    env.pop("MLFLOW_TRACKING_URI", None)

    for command in commands[1:]:
        if command.startswith("make ui"):
            port = free_port()
            server = bash(command, project, {**env, "UI_PORT": str(port)}, start_new_session=True)
            try:
                wait_for(f"http://127.0.0.1:{port}/health", server)
                runs = json.loads(urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
                    data=json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode(),
                    headers={"Content-Type": "application/json"}), timeout=30).read())["runs"]
                assert len(runs) >= 2 + 1 + 4, "the UI's store holds the two runs, the sweep parent and its 4 jobs"
            finally:
                stop_group(server)
        elif " models serve " in command:
            port = free_port()
            server = bash(re.sub(r"-p \d+", f"-p {port}", command), project, env, start_new_session=True)
            try:
                wait_for(f"http://127.0.0.1:{port}/ping", server)
                clip, sr = sf.read(project / "recordings/high/spk0_0.wav", dtype="float32")
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                    data=json.dumps({"inputs": {"samples": [clip.tolist()], "sample_rate": [sr]}}).encode())
                answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
                assert answer["predictions"][0]["label"] in {"low", "high"}, answer
            finally:
                stop_group(server)
        else:
            run_to_end(command, project, env)

    predictions = pd.read_csv(project / "preds.csv")
    assert len(predictions) == 32 and set(predictions["label"]) <= {"low", "high"}
    assert list((project / "data/hydra/multirun").glob("*/*/model/model.pt")), "the sweep trained its jobs"
