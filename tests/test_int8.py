"""`audiocnn export --format onnx --quantize int8`: an int8 file used like the fp32 one, within a
stated tolerance of its probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocnn import load_model
from audiocnn.cli import main

# Largest difference allowed between a clip's int8 and fp32 probabilities. Measured: a crnn_gru
# trained on FSDD's official split, on its 300 test clips: 0.017 and 0.034 at most with two
# calibration sets (mean 1e-4); trained on the demo, its 120 test clips: 0.013; every label
# equal (benchmarks/int8.py). This test's sharpened untrained cnn on real demo clips: 0.010.
TOLERANCE = 0.05
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def sharpened(tmp_path_factory) -> Path:
    """An untrained bundle whose answers are far from uniform (its head's weights scaled, as in
    tests/test_tta.py), so that int8 rounding shows in its probabilities."""
    from tests.conftest import untrained_bundle

    path = untrained_bundle(tmp_path_factory.mktemp("int8") / "m", "features.top_db=60")
    bundle = torch.load(path, weights_only=True)
    bundle["state_dict"]["head.fc.weight"] *= 50
    torch.save(bundle, path)
    return path.parent


def probabilities(records: list[dict]) -> np.ndarray:
    assert all("error" not in r for r in records), records
    return np.array([list(r["probabilities"].values()) for r in records])


def test_an_int8_file_predicts_like_the_fp32_one_within_the_tolerance(sharpened, prepared_store, tmp_path, capsys):
    import onnx

    from audiocnn.inference.quantize import frontend_nodes
    from tests.test_export import clips

    manifest = Path(prepared_store.paths.prepared) / "manifest.csv"  # calibration: its train rows
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model-int8.onnx"
    assert main(["export", "--model", str(sharpened), "--format", "onnx", "--output", str(fp32)]) == 0
    assert main(["export", "--model", str(sharpened), "--format", "onnx", "--quantize", "int8",
                 "--calibration", str(manifest), "--output", str(int8)]) == 0
    inputs = clips(prepared_store, tmp_path, prepared_store.features.sr)  # whole, short, joined, odd length
    capsys.readouterr()
    assert main(["predict", "--model", str(int8), *map(str, inputs)]) == 0
    assert f"{len(inputs)} of {len(inputs)} files predicted" in capsys.readouterr().err

    expected = probabilities(load_model(fp32).predict(inputs))
    got = probabilities(load_model(int8).predict(inputs))
    assert np.abs(got - expected).max() <= TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert expected.max() > 0.5  # a sharp answer: the comparison is not between two near-uniform ones

    def metadata(path):
        return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["audiocnn"])

    assert metadata(int8) == {**metadata(fp32), "quantization": "int8"}
    assert int8.stat().st_size < fp32.stat().st_size
    graph = onnx.load(str(int8)).graph
    assert QDQ_OPS <= {node.op_type for node in graph.node}  # quantized indeed
    front_end = frontend_nodes(graph)  # every node the first Log depends on
    assert any(n.op_type == "Conv" and n.name in front_end for n in graph.node)
    assert not [n for n in graph.node if n.name in front_end and n.op_type in QDQ_OPS]  # the CQT stays fp32


def test_quantize_with_torchscript_or_without_calibration_is_refused_in_one_line(sharpened, tmp_path, capsys):
    out = tmp_path / "model.ts"
    assert main(["export", "--model", str(sharpened), "--format", "torchscript", "--quantize", "int8",
                 "--calibration", str(tmp_path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --format onnx" in err, err
    assert main(["export", "--model", str(sharpened), "--format", "onnx", "--quantize", "int8",
                 "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --calibration" in err, err
    assert main(["export", "--model", str(sharpened), "--format", "onnx", "--quantize", "int8",
                 "--calibration", str(tmp_path), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no audio files" in err, err
    assert not out.exists() and not (tmp_path / "m.onnx").exists()
