"""Hostile ONNX files (#23 item 4, the ONNX lines of item 10, duplicate classes of item 11): each is
built for real with `onnx.helper` (or is a real export, edited) and ends in one `error:` line with
exit 2 from `audiocnn predict`, before onnxruntime allocates anything (`inference/onnx_check.py`).

The memory cases run `audiocnn predict` in a subprocess whose address space is capped at 3 GB above
its imports, so a regression fails instead of killing the test machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import TensorProto, helper, numpy_helper
from omegaconf import OmegaConf

from audiocnn import load_model
from audiocnn.cli import main
from audiocnn.config import compose_config
from audiocnn.errors import BundleError
from audiocnn.inference.onnx_check import ALLOWED_OPS, check_onnx
from audiocnn.models import build_model
from audiocnn.models.bundle import save_bundle
from tests.conftest import REPO

FEATURES = {"sr": 16000, "hop_length": 512, "fmin": 32.7, "n_bins": 84, "bins_per_octave": 12, "amin": 1e-4,
            "window_frames": 128, "chunk_seconds": 60}


def hostile_onnx(path: Path, side: int = 100, *, features: dict | None = None, classes=("a", "b"),
                 op: str = "ConstantOfShape", domain: str = "", metadata: dict | str | None = None,
                 data_dependent: bool = False) -> Path:
    """A graph with audiocnn's interface and metadata (inputs `waveform`, `starts`, output
    `window_probabilities`) whose first node is `op` making a [side, side] float tensor from a constant
    shape (or, `data_dependent`, from the waveform's values); its output is that tensor's sum in
    every window's every class. 700 bytes."""
    make = helper.make_node
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    if data_dependent:  # the side is the waveform's peak: unknown until it runs
        nodes = [make("ReduceMax", ["waveform"], ["peak"], keepdims=0), make("Cast", ["peak"], ["side"], to=7),
                 make("Unsqueeze", ["side", "zero"], ["side1"]), make("Concat", ["side1", "side1"], ["shape"], axis=0)]
    else:
        nodes = []
    nodes += [make(op, ["shape"], ["big"], domain=domain, value=fill),
              make("ReduceSum", ["big"], ["total"], keepdims=0),
              make("Shape", ["starts"], ["windows"]),
              make("Concat", ["one", "windows", "n_classes"], ["out_shape"], axis=0),
              make("ConstantOfShape", ["out_shape"], ["zeros"], value=helper.make_tensor("z", TensorProto.FLOAT, [1],
                                                                                           [0.0])),
              make("Add", ["zeros", "total"], ["window_probabilities"])]
    initializers = [numpy_helper.from_array(np.array([1], np.int64), "one"),
                    numpy_helper.from_array(np.array([len(classes)], np.int64), "n_classes"),
                    numpy_helper.from_array(np.array([0], np.int64), "zero")]
    if not data_dependent:
        initializers.append(numpy_helper.from_array(np.array([side, side], np.int64), "shape"))
    graph = helper.make_graph(
        nodes, "hostile",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("starts", TensorProto.INT64, ["windows"])],
        [helper.make_tensor_value_info("window_probabilities", TensorProto.FLOAT, ["batch", "windows", len(classes)])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                              + ([helper.make_opsetid(domain, 1)] if domain else []))
    if metadata is None:
        metadata = {"format": 2, "classes": list(classes), "features": features or FEATURES, "margin_samples": 5632}
    model.metadata_props.add(key="audiocnn", value=metadata if isinstance(metadata, str) else json.dumps(metadata))
    onnx.save(model, str(path))
    return path


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000)).astype(np.float32), 16000)
    return path


def predict_capped(wav: Path, model: Path) -> subprocess.CompletedProcess:
    """`audiocnn predict WAV --model MODEL` in a subprocess capped at 3 GB above its imports."""
    code = ("import re, resource, sys\nimport onnxruntime, onnx\nfrom audiocnn.cli import main\n"
            "import audiocnn.inference.predict, audiocnn.inference.exported, audiocnn.inference.onnx_check\n"
            "vm = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), vm + (3 << 30)))\n"
            "sys.exit(main(['predict', sys.argv[1], '--model', sys.argv[2]]))")
    return subprocess.run([sys.executable, "-c", code, str(wav), str(model)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"},
                          timeout=300)


def assert_one_error_line(err: str, *parts: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("side, size", [(50_000, "9.3 GiB"), (32_000, "3.8 GiB")])
def test_a_constant_of_shape_bomb_is_one_error_line_not_an_oom_kill(tmp_path, wav, side, size):
    """Case 4: a 700-byte file whose ConstantOfShape asks for [50000, 50000] (was OOM-killed) or
    [32000, 32000] floats (was 4.2 GB and exit 0)."""
    path = hostile_onnx(tmp_path / "bomb.onnx", side)
    assert path.stat().st_size < 1000
    result = predict_capped(wav, path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert_one_error_line(result.stderr, "ConstantOfShape", f"[{side}, {side}] ({size})", "at most 512.0 MiB")


def test_the_same_graph_with_a_small_constant_passes_the_check(tmp_path):
    """The control: the refusal above is about the tensor's size, not the graph's form."""
    content, metadata = check_onnx(hostile_onnx(tmp_path / "small.onnx", 100))
    assert metadata["classes"] == ["a", "b"] and content


def test_metadata_with_a_huge_sample_rate_is_refused(tmp_path, wav):
    """Case 4: metadata saying features.sr=2e8 (3.2 GB to resample a 2 s clip): the same budget as model.pt."""
    result = predict_capped(wav, hostile_onnx(tmp_path / "sr.onnx", features={**FEATURES, "sr": 200_000_000}))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "features.sr=200000000: at most 192000")


def test_a_shape_computed_from_the_waveform_values_is_refused(tmp_path):
    """A size no inspection can know (the waveform's peak): refused, whatever it would be."""
    with pytest.raises(BundleError, match="depends on the waveform's values"):
        check_onnx(hostile_onnx(tmp_path / "data.onnx", data_dependent=True))


def odd_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a hostile or broken .onnx file, what its error line says)."""
    renamed = tmp_path / "renamed.onnx"
    cfg = compose_config(["model=cnn"])
    save_bundle(build_model(cfg.model, 2, cfg.features.n_bins), OmegaConf.to_container(cfg.model),
                OmegaConf.to_container(cfg.features), ["a", "b"], renamed)  # a model.pt named .onnx
    external = hostile_onnx(tmp_path / "external.onnx")
    model = onnx.load(str(external))
    onnx.external_data_helper.set_external_data(model.graph.initializer[0], location="../../etc/passwd")
    model.graph.initializer[0].data_location = TensorProto.EXTERNAL
    model.graph.initializer[0].ClearField("raw_data")
    onnx.save(model, str(external))
    meta = {"format": 2, "features": FEATURES, "margin_samples": 5632}
    return {
        "missing file": (tmp_path / "missing.onnx", "no such file"),
        "model.pt renamed .onnx": (renamed, "not an ONNX file"),
        "custom domain": (hostile_onnx(tmp_path / "custom.onnx", op="Frobnicate", domain="com.evil"),
                          "operator domain 'com.evil'"),
        "operator not exported": (hostile_onnx(tmp_path / "bernoulli.onnx", op="RandomNormal"),
                                  "operator RandomNormal is not one audiocnn exports"),
        "external data": (external, "stored in another file"),
        "no metadata": (hostile_onnx(tmp_path / "nometa.onnx", metadata="{}"), "exported by an older audiocnn"),
        "metadata not JSON": (hostile_onnx(tmp_path / "deep.onnx", metadata="[" * 100_000), "metadata is not JSON"),
        "classes not a list": (hostile_onnx(tmp_path / "dict.onnx", metadata={**meta, "classes": {"a": 1}}),
                               "classes={'a': 1}: must be a list of class names"),
        "classes empty": (hostile_onnx(tmp_path / "empty.onnx", metadata={**meta, "classes": []}), "classes=[]: empty"),
        "classes huge": (hostile_onnx(tmp_path / "huge.onnx",
                                      metadata={**meta, "classes": list(map(str, range(10**5)))}),
                         "100,000 class names; at most 4,096"),
        "classes not strings": (hostile_onnx(tmp_path / "ints.onnx", metadata={**meta, "classes": [1, 2]}),
                                "classes[0]=1: must be a non-empty string"),
        "duplicate classes": (hostile_onnx(tmp_path / "dup.onnx", classes=("a", "a")),
                              "classes[1]='a': the same name as classes[0]"),
        "classes and output disagree": (hostile_onnx(tmp_path / "three.onnx",
                                                     metadata={**meta, "classes": list("abc")}),
                                        "its output 'window_probabilities' is [1, 64, 2]; it must be [1, 64, 3]"),
        "margin far beyond the kernels": (hostile_onnx(tmp_path / "margin.onnx", metadata={
            **meta, "classes": ["a", "b"], "margin_samples": 512 * 10**6}), "margin_samples=512000000"),
        "events decoding hostile": (hostile_onnx(tmp_path / "decoding.onnx", metadata={
            **meta, "classes": ["a", "b"], "task": "events", "events": {
                "time_stride": 4, "frame_seconds": 0.128, "post_processing": {
                    "thresholds": [0.5, 0.5], "median_frames": [10**9, 1], "min_duration": 0, "min_gap": 0}}}),
            "events.post_processing.median_frames[0]=1000000000: must be an odd integer"),
        "events graph without frame outputs": (hostile_onnx(tmp_path / "noframes.onnx", metadata={
            **meta, "classes": ["a", "b"], "task": "events", "events": {"time_stride": 4, "frame_seconds": 0.128}}),
            "gives ['window_probabilities', 'frame_probabilities']"),
    }


ODD = ["missing file", "model.pt renamed .onnx", "custom domain", "operator not exported", "external data",
       "no metadata", "metadata not JSON", "classes not a list", "classes empty", "classes huge", "classes not strings",
       "duplicate classes", "classes and output disagree", "margin far beyond the kernels", "events decoding hostile",
       "events graph without frame outputs"]


@pytest.mark.parametrize("name", ODD)
def test_a_broken_or_odd_onnx_file_is_one_error_line(tmp_path, wav, capsys, name):
    """Item 10: ONNX load failures were tracebacks (onnxruntime's NoSuchFile, InvalidProtobuf, Fail, a
    KeyError on the classes); item 11: duplicate class names were accepted."""
    path, message = odd_files(tmp_path)[name]
    assert main(["predict", str(wav), "--model", str(path)]) == 2
    assert_one_error_line(capsys.readouterr().err, message)


def export_zoo(tmp_path: Path) -> list[Path]:
    """ONNX exports of the model families and options whose graphs differ (untrained, seeded)."""
    from audiocnn.features.cqt import CQTFrontend
    from audiocnn.inference.export import export_model

    variants = {
        "cnn_tta": (["model=cnn", "features.top_db=60"], {"pitch_bins": [-1, 0, 1], "time_frames": [0, 4]}),
        "crnn_lstm_attention": (["model=crnn_lstm", "model.temporal_pool=attention", "model.freq_pool=attention"],
                                None),
        "crnn_gru_centroid_last": (["model=crnn_gru", "model.freq_pool=max_centroid", "model.temporal_pool=last",
                                    "model.bidirectional=false", "model.num_layers=2"], None),
        "resnet_pcen": (["model=resnet", "norm=pcen", "model.norm.trainable=true"], None),
        "cnn_on_the_fly_avg": (["model=cnn", "features.on_the_fly=true", "model.blocks.0.pool=avg",
                                "norm=bin_norm", "+model.head_hidden=[16]"], None),
        "vgg_speech": (["model=vgg", "features=speech"], None),
        "lenet_grid": (["model=lenet"], None),
    }
    paths = []
    for name, (overrides, tta) in variants.items():
        torch.manual_seed(0)
        cfg = compose_config(overrides)
        net = build_model(cfg.model, 3, cfg.features.n_bins, cfg.features.get("top_db")).eval()
        frontend = CQTFrontend.from_config(cfg.features) if cfg.features.on_the_fly else None
        folder = tmp_path / name
        save_bundle(net, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features), ["a", "b", "c"],
                    folder / "model.pt", frontend=frontend)
        paths.append(export_model(folder, "onnx", tmp_path / f"{name}.onnx", tta=tta))
    return paths


@pytest.mark.slow  # exports every model of the zoo (~20 s); the fast tier checks the default model's export
def test_audiocnn_exports_pass_the_check_and_use_only_allowed_operators(tmp_path):
    """The allow-list is what the exporter writes: every export of the zoo passes (an operator a new
    graph adds fails here first, naming it), and loads and scores through the checked session."""
    used = set()
    for path in export_zoo(tmp_path):
        used |= {node.op_type for node in onnx.load(str(path)).graph.node}
        check_onnx(path)
        model = load_model(path)
        record = model.predict([np.zeros(20000, np.float32)], sample_rate=int(model.features["sr"]))[0]
        assert "error" not in record and abs(sum(record["probabilities"].values()) - 1) < 1e-4, record
    assert used <= ALLOWED_OPS, sorted(used - ALLOWED_OPS)


def test_exported_torchscript_metadata_gets_the_same_checks(tmp_path):
    """A TorchScript export (trusted code) with its metadata edited: duplicate classes are refused too."""
    from audiocnn.inference.export import export_model

    cfg = compose_config(["model=cnn"])
    save_bundle(build_model(cfg.model, 2, cfg.features.n_bins).eval(), OmegaConf.to_container(cfg.model),
                OmegaConf.to_container(cfg.features), ["a", "b"], tmp_path / "m" / "model.pt")
    path = export_model(tmp_path / "m", "torchscript", tmp_path / "m.ts")
    extra = {"audiocnn.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    metadata = json.loads(extra["audiocnn.json"])
    torch.jit.save(module, str(path), _extra_files={"audiocnn.json": json.dumps({**metadata, "classes": ["a", "a"]})})
    with pytest.raises(BundleError, match=r"classes\[1\]='a': the same name as classes\[0\]"):
        load_model(path, trust_code=True)
