"""A TorchScript file is a program: it is loaded only when the user says they trust it.

The hostile archive built here does what the review's did: its `__setstate__` creates a file
while it loads (`torch.from_file(..., shared=True)` creates the file it maps), and its `forward`
creates another and answers with the bytes of a file it reads as "probabilities". Without
`--trust-torchscript` / `trust_code=True` it is refused before it is read, whatever its name,
and nothing is created.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omegaconf import OmegaConf

from audiocnn.config import compose_config
from audiocnn.errors import BundleError
from audiocnn.inference.export_format import EXPORT_FORMAT
from audiocnn.inference.api import is_torchscript, load_model

SECRET = "the content of a file the model should never read"


def hostile_torchscript(path: Path, marker_dir: Path, secret: Path) -> Path:
    """A TorchScript archive carrying audiocnn's metadata, whose load and forward touch the disk."""
    load_marker, forward_marker = str(marker_dir / "written_at_load"), str(marker_dir / "written_by_forward")
    secret_file, secret_size = str(secret), secret.stat().st_size

    class Hostile(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.paths = [load_marker, forward_marker, secret_file]
            self.secret_size = secret_size
            self.touched = torch.zeros(8, dtype=torch.uint8)  # kept, so the reads are not optimised away

        @torch.jit.export
        def __getstate__(self) -> tuple[list[str], int, bool]:
            return self.paths, self.secret_size, self.training

        @torch.jit.export
        def __setstate__(self, state: tuple[list[str], int, bool]) -> None:
            self.touched = torch.from_file(state[0][0], shared=True, size=8, dtype=torch.uint8)  # creates it
            self.paths, self.secret_size, self.training = state[0], state[1], state[2]

        def forward(self, waveform: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
            self.touched = torch.from_file(self.paths[1], shared=True, size=8, dtype=torch.uint8)
            stolen = torch.from_file(self.paths[2], shared=False, size=self.secret_size, dtype=torch.uint8)
            return stolen[:2].to(torch.float32)[None, None].expand(waveform.shape[0], starts.shape[0], 2)

    # audiocnn's own metadata (format, classes, every front-end setting), so only the code gives it away
    features = OmegaConf.to_container(compose_config([]).features, resolve=True)
    metadata = {"format": EXPORT_FORMAT, "classes": ["a", "b"], "features": features, "margin_samples": 0}
    torch.jit.save(torch.jit.script(Hostile()), str(path), _extra_files={"audiocnn.json": json.dumps(metadata)})
    return path


@pytest.fixture
def hostile(tmp_path):
    """(archive, marker folder, a WAV to classify); the archive is built in one folder and the
    markers it would write go to another, which must stay empty."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    markers = tmp_path / "markers"
    markers.mkdir()
    archive = hostile_torchscript(tmp_path / "model.pt", markers, secret)
    wav = tmp_path / "clip.wav"
    sf.write(wav, np.zeros(8000, dtype=np.float32), 8000)
    return archive, markers, wav


def test_the_hostile_archive_really_runs_its_code_when_trusted(hostile, tmp_path):
    """The control: with trust given, the archive's code runs (so the refusals below are what stops it)."""
    archive, markers, wav = hostile
    model = load_model(archive, trust_code=True)
    assert (markers / "written_at_load").exists()
    record = model.predict([wav])[0]
    assert (markers / "written_by_forward").exists()
    # even trusted, the bytes it read are not passed off as probabilities (answers are checked)
    assert "label" not in record and "not probabilities" in record["error"], record


@pytest.mark.parametrize("name", ["model.pt", "x.bin", "model.ts", "weights.torchscript", "model"])
def test_load_model_refuses_torchscript_by_any_name_before_loading_it(hostile, tmp_path, name):
    archive, markers, _ = hostile
    target = tmp_path / "named" / name
    target.parent.mkdir()
    shutil.copy(archive, target)
    assert is_torchscript(target)
    with pytest.raises(BundleError, match="trust_code=True"):
        load_model(target)
    assert list(markers.iterdir()) == []


def test_a_torchscript_model_pt_in_a_model_folder_is_refused_as_not_a_bundle(hostile, tmp_path):
    """A folder source reads `model.pt` as a bundle (`torch.load(weights_only=True)`), which refuses
    TorchScript archives without loading them."""
    archive, markers, _ = hostile
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(archive, folder / "model.pt")
    with pytest.raises(BundleError, match="not a model file audiocnn can read safely"):
        load_model(folder)
    assert list(markers.iterdir()) == []


@pytest.mark.parametrize("name", ["model.pt", "x.bin", "model.ts"])
def test_predict_refuses_torchscript_in_one_line_and_creates_nothing(hostile, tmp_path, name):
    archive, markers, wav = hostile
    target = tmp_path / name
    if target != archive:
        shutil.copy(archive, target)
    work = tmp_path / "work"
    work.mkdir()
    before = set(tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, "-m", "audiocnn.cli", "predict", str(wav), "--model", str(target),
                           "--output", str(work / "preds.csv")], cwd=work, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--trust-torchscript" in lines[0], done.stderr
    assert set(tmp_path.rglob("*")) == before  # no marker, no output, no mlflow.db
    assert SECRET not in done.stdout + done.stderr


def test_predict_with_trust_torchscript_loads_an_audiocnn_export(prepared_store, tmp_path):
    """The option works for a file the user exported themselves (and only then is it loaded)."""
    from audiocnn.cli import main
    from tests.conftest import untrained_bundle

    folder = untrained_bundle(tmp_path / "m", "features.top_db=60").parent
    exported = tmp_path / "model.ts"
    assert main(["export", "--model", str(folder), "--format", "torchscript", "--output", str(exported)]) == 0
    wav = sorted(Path(prepared_store.paths.raw).rglob("*.wav"))[0]
    assert main(["predict", str(wav), "--model", str(exported)]) == 2
    assert main(["predict", str(wav), "--model", str(exported), "--trust-torchscript",
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert "error" not in (tmp_path / "p.csv").read_text().splitlines()[0]
