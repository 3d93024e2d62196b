"""Answers are finite or absent, and outputs never destroy inputs (issue #23, items 6, 7, 10, 11).

Every hostile input is built for real: float WAVs of 1e19 or NaN, a bundle with NaN weights or a
temperature of 1e-300, 0-frame, 1-sample and cut WAVs, a file name of non-UTF-8 bytes, an ONNX
file whose graph multiplies its probabilities by 120. The models are untrained (`untrained_bundle`):
what is checked is what happens around the model.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiocnn import load_model
from audiocnn.cli import main
from audiocnn.data.names import read_csv_cell
from audiocnn.inference.api import answer_problem
from tests.conftest import untrained_bundle

SR = 8000


def noise(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, subtype: str = "PCM_16") -> str:
    sf.write(path, samples, SR, subtype=subtype)
    return str(path)


def edited_bundle(root: Path, edit) -> str:
    """`untrained_bundle` loaded as the plain data it is, changed by `edit(bundle)`, saved back."""
    path = untrained_bundle(root)
    bundle = torch.load(path, weights_only=True)
    edit(bundle)
    torch.save(bundle, path)
    return str(path)


def strict_json(line: str) -> dict:
    """`json.loads` refusing the NaN / Infinity that Python's json writes by default."""
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV or JSONL output, read as strict UTF-8 (and strict JSON)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return list(csv.DictReader(lines)) if path.suffix == ".csv" else list(map(strict_json, lines))


def nan_weights(bundle):
    for tensor in bundle["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))


@pytest.mark.parametrize("case", ["amplitude_1e19", "nan_weights", "temperature_1e-300"])
def test_non_finite_answers_are_reported_not_labelled_and_jsonl_stays_json(case, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", noise())
    if case == "amplitude_1e19":
        model = str(untrained_bundle(tmp_path / "model"))
        hostile = write_wav(tmp_path / "loud.wav", noise() * 1e20, subtype="FLOAT")  # peak about 4e19
        inputs, predicted = [hostile, good], 1
    else:
        edit = nan_weights if case == "nan_weights" else (lambda bundle: bundle.update(temperature=1e-300))
        model = edited_bundle(tmp_path / "model", edit)
        inputs, predicted = [good], 0
    out = tmp_path / "preds.jsonl"
    assert main(["predict", *inputs, "--model", model, "--output", str(out), "--timeline"]) == (0 if predicted else 1)
    rows = {row["path"]: row for row in map(strict_json, out.read_text().splitlines())}
    hostile_row = rows[inputs[0]]
    assert hostile_row["label"] is None and hostile_row["confidence"] is None and "not finite" in hostile_row["error"]
    assert f"predict: {predicted} of {len(inputs)} files predicted, {len(inputs) - predicted} skipped" in \
        capsys.readouterr().err
    timeline = Path(str(out).replace(".jsonl", "_timeline.jsonl")).read_text().splitlines()
    assert {strict_json(line)["path"] for line in timeline} == set(inputs[:0] if not predicted else [good])


def test_recordings_too_short_or_without_audio_are_reported_and_a_short_real_clip_is_scored(tmp_path):
    real = write_wav(tmp_path / "real.wav", noise())
    data = Path(real).read_bytes()
    cases = {
        "zero_frames.wav": "empty: no audio samples",
        "one_sample.wav": "too short: 2 samples at 16000 Hz, fewer than one hop",
        "all_nan.wav": "no audio: all 16000 samples are NaN or infinite",
        "cut_in_header.wav": "Error opening",  # no data chunk left: soundfile's reason
        "cut_to_header.wav": "empty: no audio samples",
        "cut_to_ten_samples.wav": "too short: 20 samples at 16000 Hz",
    }
    write_wav(tmp_path / "zero_frames.wav", np.zeros(0, np.float32))
    write_wav(tmp_path / "one_sample.wav", np.full(1, 0.5, np.float32))
    write_wav(tmp_path / "all_nan.wav", np.full(2 * SR, np.nan, np.float32), subtype="FLOAT")
    (tmp_path / "cut_in_header.wav").write_bytes(data[:30])
    (tmp_path / "cut_to_header.wav").write_bytes(data[:44])
    (tmp_path / "cut_to_ten_samples.wav").write_bytes(data[:44 + 20])
    short = write_wav(tmp_path / "short.wav", noise(0.3))  # shorter than a window (4.1 s), real audio
    model = load_model(untrained_bundle(tmp_path / "model"))
    records = model.predict([str(tmp_path / name) for name in cases] + [short, real])
    for record, (name, reason) in zip(records, cases.items()):
        assert "label" not in record and reason in record["error"], (name, record)
    for record in records[-2:]:
        assert "error" not in record and record["label"] in model.classes
        assert sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert records[-2]["duration"] == 0.3


def test_an_all_nan_array_is_reported_too(tmp_path):
    record = load_model(untrained_bundle(tmp_path)).predict([np.full(SR, np.nan, np.float32)], sample_rate=SR)[0]
    assert "label" not in record and record["error"].startswith("ValueError: no audio: all 8000 samples")


def times_120(onnx_path: Path) -> None:
    """Rewrite an exported ONNX file so that each of its float outputs is multiplied by 120."""
    import onnx
    from onnx import TensorProto, helper

    graph = (model := onnx.load(str(onnx_path))).graph
    for output in graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = f"{output.name}_before_x120"
        for node in graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        graph.initializer.append(helper.make_tensor(f"{output.name}_120", TensorProto.FLOAT, [], [120.0]))
        graph.node.append(helper.make_node("Mul", [inner, f"{output.name}_120"], [output.name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def test_an_exported_model_whose_scores_are_outside_0_1_gives_no_label(tmp_path, capsys):
    exported = tmp_path / "model.onnx"
    assert main(["export", "--model", str(untrained_bundle(tmp_path / "model")), "--format", "onnx",
                 "--output", str(exported)]) == 0
    wav = write_wav(tmp_path / "a.wav", noise())
    honest = load_model(exported).predict([wav])[0]
    assert "error" not in honest, honest
    times_120(exported)
    record = load_model(exported).predict([wav])[0]
    assert "label" not in record and "not probabilities" in record["error"] and "outside [0, 1]" in record["error"]
    assert main(["predict", wav, "--model", str(exported)]) == 1
    assert "0 of 1 files predicted, 1 skipped" in capsys.readouterr().err


@pytest.mark.parametrize("scores, reason", [
    ([0.5, 0.5, float("nan")], "not finite (1 of 3"),
    ([0.5, 0.5, float("inf")], "not finite"),
    ([120.0, 0.0, 0.0], "outside [0, 1]"),
    ([0.9, -0.2, 0.3], "outside [0, 1]"),
    ([0.5, 0.4, 0.05], "sum to 0.95, not 1"),
    ([0.5, 0.5], "shape (2,) for 3 classes"),
])
def test_scores_that_are_not_probabilities_are_named(scores, reason):
    assert reason in answer_problem(np.array(scores), 3)
    assert answer_problem(np.array([0.2, 0.3, 0.5 + 5e-4]), 3) == ""  # within the tolerance


def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", noise())
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{wav}\n")
    link = tmp_path / "link.wav"
    link.symlink_to(wav)
    other = tmp_path / "preds_timeline.csv"
    other.write_text(f"path\n{wav}\n")  # a list of inputs named like the timeline of --output preds.csv
    before = {path: path.read_bytes() for path in (Path(wav), listing, other)}
    nowhere = str(tmp_path / "no-model")  # never loaded: the refusal comes first
    for inputs, output, extra in ([[wav], wav, []], [[str(listing)], str(listing), []], [[wav], str(link), []],
                                  [[str(tmp_path)], wav, []], [[str(other)], str(tmp_path / "preds.csv"), ["--timeline"]]):
        assert main(["predict", *inputs, "--model", nowhere, "--output", output, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith(f"error: --output=") and "is the input" in err, err
    assert main(["predict", wav, "--model", nowhere, "--output", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "link.wav", "list.csv", "preds_timeline.csv"]


def test_an_existing_output_is_replaced_atomically(tmp_path, monkeypatch):
    from audiocnn.inference import predict

    wav = write_wav(tmp_path / "a.wav", noise())
    model = str(untrained_bundle(tmp_path / "model"))
    out = tmp_path / "preds.csv"
    out.write_text("earlier results\n")

    def fail(value):
        raise OSError("disk full")
    monkeypatch.setattr(predict, "csv_cell", fail)  # the write fails half way
    with pytest.raises(OSError, match="disk full"):
        main(["predict", wav, "--model", model, "--output", str(out)])
    assert out.read_text() == "earlier results\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.wav", "model", "preds.csv"]
    monkeypatch.undo()
    assert main(["predict", wav, "--model", model, "--output", str(out)]) == 0
    assert next(csv.DictReader(out.open()))["path"] == wav


def test_a_non_utf8_file_name_is_written_escaped_and_sinks_nothing(tmp_path, capsys):
    folder = tmp_path / "recordings"
    folder.mkdir()
    for number in range(3):
        write_wav(folder / f"{number}.wav", noise(seed=number))
    with open(os.path.join(os.fsencode(folder), b"bad\xff.wav"), "wb") as handle:
        sf.write(handle, noise(seed=9), SR, format="WAV")
    model = str(untrained_bundle(tmp_path / "model"))
    shown = f"{folder}/bad\\xff.wav"
    for suffix in ("csv", "jsonl"):
        out = tmp_path / f"preds.{suffix}"
        assert main(["predict", str(folder), "--model", model, "--output", str(out), "--timeline"]) == 0
        rows, timeline = (read_rows(tmp_path / f"preds{tail}.{suffix}") for tail in ("", "_timeline"))
        assert len(rows) == 4 and all(row.get("error", "") == "" and row["label"] for row in rows)
        assert shown in [row["path"] for row in rows] and shown in [row["path"] for row in timeline]
    assert main(["predict", str(folder), "--model", model]) == 0
    captured = capsys.readouterr()
    assert shown in captured.out and "4 of 4 files predicted" in captured.err


def test_formula_like_cells_are_escaped_as_in_the_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / "=1+2.wav", noise())
    formula = '=HYPERLINK("http://example.com","x")'
    model = edited_bundle(tmp_path / "model", lambda bundle: bundle.update(classes=[formula, "+one", "two"]))
    assert main(["predict", "=1+2.wav", "--model", model, "--output", "preds.csv", "--top-k", "3"]) == 0
    row = next(csv.DictReader(open("preds.csv", encoding="utf-8")))
    assert row["path"] == "'=1+2.wav"
    assert {row[f"top{k}_label"] for k in (1, 2, 3)} == {"'" + formula, "'+one", "two"}
    assert read_csv_cell(row["path"]) == "=1+2.wav"
    assert main(["predict", "=1+2.wav", "--model", model, "--output", "preds.jsonl"]) == 0
    assert strict_json(Path("preds.jsonl").read_text())["path"] == "=1+2.wav"  # JSON is not a spreadsheet


@pytest.mark.parametrize("option", [["--hop-s", "inf"], ["--hop-s", "nan"], ["--hop-s", "-1"], ["--hop-s", "0"],
                                    ["--hop-s", "abc"], ["--top-k", "0"], []])
def test_a_bad_option_is_one_error_line_before_the_model_is_read(option, tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", noise())
    argv = ["predict", wav, *(["--model", str(tmp_path / "no-model")] if option else []), *option]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert (option[0] if option else "--model") in err and "does not exist" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_the_python_api_refuses_an_infinite_hop(tmp_path):
    model = load_model(untrained_bundle(tmp_path))
    with pytest.raises(ValueError, match="hop_seconds=inf: must be a finite positive number"):
        model.predict([noise()], sample_rate=SR, hop_seconds=float("inf"))


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`audiocnn predict folder/ --model M | head -6` (the README's example): the reader closes the
    pipe before the table is written; predict still says how many files it predicted, exit 0."""
    import subprocess
    import sys

    folder = untrained_bundle(tmp_path / "m").parent
    (tmp_path / "clips").mkdir()
    for number in range(3):
        write_wav(tmp_path / "clips" / f"{number}.wav", noise(seed=number))
    read, write = os.pipe()
    os.close(read)  # a reader that is already gone: every write to stdout is EPIPE
    done = subprocess.run([sys.executable, "-m", "audiocnn.cli", "predict", str(tmp_path / "clips"), "--model",
                           str(folder)], stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "predict: 3 of 3 files predicted" in done.stderr
