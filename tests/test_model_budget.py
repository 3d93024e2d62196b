"""The resource budget of a model file (#23 items 2 and 3, and duplicate class names of item 11):
settings, architecture and stored tensors are checked before anything is allocated.

Each hostile `model.pt` is built for real: a real bundle (`untrained_bundle`) edited with
torch.load / torch.save, or its zip archive rewritten with one tensor entry replaced by deflated
zeros. The memory cases run in a subprocess whose address space is capped at 3 GB above what its
imports take (`resource.setrlimit(RLIMIT_AS)`), so a regression fails there instead of taking the
test machine down; it reports each case's exit code, error line, seconds and peak RSS growth.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from audiocnn.features import budget
from audiocnn.models import budget as model_budget
from audiocnn.config import compose_config
from audiocnn.errors import BundleError, ConfigError
from audiocnn.models import build_model
from audiocnn.models.bundle import MODEL_CLASSES, load_bundle, load_state, save_bundle
from audiocnn.validation import validate_config
from tests.conftest import REPO, untrained_bundle

LIMIT = 3 << 30  # bytes of address space a case may add to its imports
BOMB_BYTES = 1 << 30  # the deflated zeros' declared size (the issue's file declared 6.4 GB)

# Run in the capped subprocess: imports first (torch maps ~3 GB of address space by itself), then
# the cap, then every case; one JSON line per case.
RUNNER = r'''
import contextlib, io, json, re, resource, sys, time
import torch
from audiocnn.cli import main
import audiocnn.inference.predict, audiocnn.inference.api, audiocnn.models.bundle, audiocnn.training.train

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024

vm = status("VmSize")
resource.setrlimit(resource.RLIMIT_AS, (vm + __LIMIT__, vm + __LIMIT__))
cases = json.loads(sys.argv[1])
for name, kind, argument in cases:
    start, before = time.perf_counter(), status("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:  # reset VmHWM to the current RSS
        refs.write("5")
    err, code = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if kind == "predict":
                code = main(["predict", argument[0], "--model", argument[1]])
            elif kind == "load_state":
                audiocnn.models.bundle.load_state(argument)
            elif kind == "init_from":
                from audiocnn.config import compose_config
                from audiocnn.models import build_model
                from audiocnn.training.train import initial_weights
                cfg = compose_config(["model=cnn", "model.init_from=" + argument])
                initial_weights(cfg.model, build_model(cfg.model, 3, cfg.features.n_bins))
            elif kind == "config":
                from audiocnn.config import compose_config, validate_config
                validate_config(compose_config(argument))
            elif kind == "torch.load":
                torch.load(argument, map_location="cpu", weights_only=True)
            elif kind == "meta build":
                from audiocnn.models.budget import model_cost
                from audiocnn.models.crnn import CRNN
                model_cost(CRNN, {"blocks": [{"channels": 16}], "hidden_size": argument}, 3, 84, 128)
        error = None
    except Exception as caught:
        error = f"{type(caught).__name__}: {caught}"
    print(json.dumps({"name": name, "code": code, "stderr": err.getvalue(), "error": error,
                      "seconds": time.perf_counter() - start, "grew": status("VmHWM") - before}), flush=True)
'''.replace("__LIMIT__", str(LIMIT))


def run_capped(cases: list[tuple[str, str, object]]) -> dict[str, dict]:
    """{case name: its report} from one capped subprocess (see RUNNER)."""
    result = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"},
                            timeout=600)
    reports = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            reports[report["name"]] = report
    assert reports, f"the capped run reported nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    return reports


def edited_bundle(folder: Path, group: str, key: str, value, *overrides: str) -> Path:
    """A real bundle (`untrained_bundle`) with `bundle[group][key] = value`, saved as `folder/model.pt`."""
    bundle = torch.load(untrained_bundle(folder / "source", *overrides), weights_only=True)
    bundle[group][key] = value
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(bundle, folder / "model.pt")
    return folder / "model.pt"


def deflated_bomb(source: Path, target: Path, size: int = BOMB_BYTES) -> Path:
    """`source`'s archive with its largest tensor entry replaced by `size` zero bytes, deflated
    (written in chunks: 1 GiB takes about 1 MB in the file). The pickle still describes the small
    tensor, as in the issue's file; torch would inflate the whole entry before it compares the sizes."""
    with zipfile.ZipFile(source) as archive:
        infos = archive.infolist()
        largest = max((i for i in infos if "/data/" in i.filename), key=lambda i: i.file_size)
        with zipfile.ZipFile(target, "w") as out:
            for info in infos:
                if info is largest:
                    entry = zipfile.ZipInfo(info.filename)
                    entry.compress_type = zipfile.ZIP_DEFLATED
                    with out.open(entry, "w", force_zip64=True) as stream:
                        block = bytes(1 << 24)
                        for _ in range(size // len(block)):
                            stream.write(block)
                else:
                    out.writestr(info, archive.read(info.filename))
    return target


HUGE_SETTINGS = {  # the cases: (group, key, value, overrides, what the line names)
    "window_frames=1e6": ("features", "window_frames", 1_000_000, (), "features.window_frames=1000000: at most 4096"),
    "window_frames=1e6 (float)": ("features", "window_frames", 1e6, (),
                                  "features.window_frames=1000000.0: must be an integer"),
    "bins_per_octave=1e4": ("features", "bins_per_octave", 10_000, (), "features.bins_per_octave=10000: at most 120"),
    "fmin=1e-3": ("features", "fmin", 1e-3, (), "features.fmin=0.001: the lowest CQT bin needs a kernel of"),
    "sr=1e6": ("features", "sr", 1_000_000, (), "features.sr=1000000: at most 192000"),
    "hidden_size=8192": ("model", "hidden_size", 8192, ("model=crnn_gru",), "model.hidden_size=8192: the model would "
                                                                          "have 434,"),
}


@pytest.fixture(scope="module")
def capped(tmp_path_factory) -> dict[str, dict]:
    """Every memory case of this file, run once in one capped subprocess."""
    root = tmp_path_factory.mktemp("budget")
    wav = root / "clip.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000)).astype(np.float32), 16000)
    cases = []
    for name, (group, key, value, overrides, _) in HUGE_SETTINGS.items():
        path = edited_bundle(root / name.replace(" ", "_"), group, key, value, *overrides)
        cases.append((name, "predict", [str(wav), str(path)]))
    (root / "bomb").mkdir()
    bomb = deflated_bomb(untrained_bundle(root / "real"), root / "bomb" / "model.pt")
    cases += [("bomb: predict", "predict", [str(wav), str(bomb)]), ("bomb: load_state", "load_state", str(bomb)),
              ("bomb: model.init_from", "init_from", str(bomb)),
              ("conf: model.hidden_size=8192", "config", ["model=crnn_gru", "model.hidden_size=8192"]),
              ("conf: features.fmin=0.001", "config", ["features.fmin=0.001"]),
              ("meta build: hidden_size=8192", "meta build", 8192),
              ("control: torch.load inflates the bomb", "torch.load", str(bomb))]
    reports = run_capped(cases)
    reports["bomb size"] = {"bytes": bomb.stat().st_size}
    return reports


def one_error_line(report: dict) -> str:
    assert report["code"] == 2, report
    lines = report["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in report["stderr"], report
    return lines[0]


@pytest.mark.parametrize("name", list(HUGE_SETTINGS))
def test_a_model_pt_with_huge_settings_is_refused_in_one_line_naming_the_setting(capped, name):
    """Case 2: positive but huge settings (the bundle check once asked only for > 0)."""
    report = capped[name]
    line = one_error_line(report)
    assert HUGE_SETTINGS[name][-1] in line, line
    assert report["seconds"] < 5, report  # what it costs beyond the imports: milliseconds
    assert report["grew"] < 300 << 20, report  # nothing of the model is allocated


def test_a_deflated_zero_tensor_is_refused_before_it_is_inflated(capped):
    """Case 3: a few MB holding 1 GiB of deflated zeros (the issue's: 7.4 MB for 6.4 GB): predict,
    `load_state` and training through `model.init_from` refuse it from the zip directory."""
    assert capped["bomb size"]["bytes"] < 8 << 20
    line = one_error_line(capped["bomb: predict"])
    assert "data/" in line and "inflates" in line and "1.0 GiB declared" in line, line
    for name in ("bomb: predict", "bomb: load_state", "bomb: model.init_from"):
        report = capped[name]
        assert report["seconds"] < 5 and report["grew"] < 300 << 20, report
    for name in ("bomb: load_state", "bomb: model.init_from"):
        assert capped[name]["error"].startswith("BundleError: ") and "inflates" in capped[name]["error"]
    control = capped["control: torch.load inflates the bomb"]  # what the check prevents
    assert control["grew"] > 900 << 20 and control["error"], control


def test_conf_meets_the_same_budget_before_the_model_is_built(capped):
    """The same limits for conf/: refused by validation, before `validate_model` builds the model."""
    report = capped["conf: model.hidden_size=8192"]
    assert report["error"].startswith("ConfigError: model.hidden_size=8192: the model would have"), report
    assert report["grew"] < 300 << 20, report
    assert capped["conf: features.fmin=0.001"]["error"].startswith("ConfigError: features.fmin=0.001: the lowest")


def test_building_on_the_meta_device_allocates_nothing(capped):
    """`model_budget.model_cost` builds the model on `torch.device("meta")`: 1.6 GB of GRU weights take no memory."""
    report = capped["meta build: hidden_size=8192"]
    assert report["error"] is None and report["grew"] < 50 << 20, report


def test_stored_entries_larger_than_the_pickle_says_are_refused(tmp_path):
    """An uncompressed entry bigger than the tensor the pickle describes (torch would read it whole)."""
    source = untrained_bundle(tmp_path / "real")
    target = tmp_path / "padded" / "model.pt"
    target.parent.mkdir()
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        largest = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        for info in archive.infolist():
            out.writestr(info, bytes(8 << 20) if info is largest else archive.read(info.filename))
    with pytest.raises(BundleError, match=r"its tensor entries declare 8\.\d MiB .*its pickle describes"):
        load_bundle(target)
    with pytest.raises(BundleError, match="its pickle describes"):
        load_state(target)


def test_a_consistent_but_oversized_tensor_is_refused_by_the_architecture(tmp_path):
    """A pickle that describes a big tensor (and an entry that holds it): its shape is not the one the
    model's settings make, found on the meta skeleton before the tensor is read."""
    path = edited_bundle(tmp_path / "big", "state_dict", "backbone.4.0.weight", torch.zeros(2_000_000))
    with pytest.raises(BundleError, match=r"state_dict.backbone.4.0.weight: shape \[2000000\]; the model's "
                                          r"settings make it \[64, 64, 3, 3\]"):
        load_bundle(path)


def test_a_tensor_viewing_a_bigger_storage_is_refused_by_what_the_model_needs(tmp_path):
    """The right shape, but a view of an 8 MB storage: torch.save writes the whole storage."""
    bundle = torch.load(untrained_bundle(tmp_path / "real"), weights_only=True)
    key = "backbone.4.0.weight"
    bundle["state_dict"][key] = torch.zeros(2_000_000)[: math.prod(bundle["state_dict"][key].shape)].view(64, 64, 3, 3)
    (tmp_path / "view").mkdir()
    torch.save(bundle, tmp_path / "view" / "model.pt")
    with pytest.raises(BundleError, match=r"stores 7\.\d MiB of tensors .*its model needs 2\d\d\.\d KiB"):
        load_bundle(tmp_path / "view")


def test_our_own_bundles_load_within_the_budget(tmp_path):
    """Every model of conf/model, at the default and speech front-ends, and an on-the-fly one."""
    from audiocnn.features.cqt import CQTFrontend

    for model in ("cnn", "crnn_gru", "crnn_lstm", "resnet", "vgg", "alexnet", "lenet"):
        for features in ("cqt", "speech"):
            load_bundle(untrained_bundle(tmp_path / f"{model}-{features}", f"model={model}", f"features={features}"))
    cfg = compose_config(["model=cnn", "features.on_the_fly=true", "features.trainable=true"])
    net = build_model(cfg.model, 3, cfg.features.n_bins)
    path = save_bundle(net, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.features), ["a", "b", "c"],
                       tmp_path / "otf" / "model.pt", frontend=CQTFrontend.from_config(cfg.features))
    load_bundle(path)


def test_duplicate_class_names_in_a_bundle_are_refused(tmp_path):
    path = edited_bundle(tmp_path / "dup", "classes", 2, "zero")  # ["zero", "one", "zero"]
    with pytest.raises(BundleError, match=r"classes\[2\]='zero': the same name as classes\[0\]; class names must "
                                          "be distinct"):
        load_bundle(path)


@pytest.mark.parametrize("classes, message", [
    ("zero", "must be a list of class names"), ([], "empty"), (["a", 3], r"classes\[1\]=3: must be a non-empty string"),
    (["a", " "], "must be a non-empty string"), ([f"c{i}" for i in range(5000)], "5,000 class names; at most 4,096"),
    (["a", "x" * 300], r"classes\[1\]: 300 characters; at most 256"),
])
def test_odd_class_lists_are_refused_naming_what_is_wrong(tmp_path, classes, message):
    bundle = torch.load(untrained_bundle(tmp_path / "real"), weights_only=True)
    bundle["classes"] = classes
    torch.save(bundle, tmp_path / "odd.pt")
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "odd.pt")


def test_the_front_end_rules_are_one_schema_for_conf_and_model_files():
    """The `features` group's schema extends the one model files are checked with (`budget.FrontendSettings`):
    a conf setting and the same value in a model file get the same message."""
    from audiocnn.features.settings import FeatureSettings

    assert issubclass(FeatureSettings, budget.FrontendSettings)
    for override, value in (("features.sr=1000000", {"sr": 1_000_000}), ("features.fmin=0.001", {"fmin": 0.001}),
                            ("features.n_bins=120", {"n_bins": 120}),
                            ("features.window_frames=0", {"window_frames": 0}),
                            ("features.amin=nan", {"amin": float("nan")}), ("features.top_db=true", {"top_db": True})):
        with pytest.raises(ConfigError) as conf:
            validate_config(compose_config([override]))
        features = {**OmegaConf.to_container(compose_config([]).features), **value}
        assert str(conf.value) == budget.features_problem(features)


@pytest.mark.parametrize("overrides", [[], ["features=speech"], ["features.sr=44100", "features.bins_per_octave=24",
                                                                 "features.n_bins=168"]])
def test_the_kernel_bounds_hold_for_the_real_front_end(overrides):
    """The budget's closed forms bound what `LogCQT` really builds: its kernels and the chunks' margin
    (which an exported file's metadata states)."""
    from audiocnn.features.cqt import CQTFrontend
    from audiocnn.features.plan import chunk_margin

    cfg = compose_config(overrides)
    features = OmegaConf.to_container(cfg.features)
    frontend = CQTFrontend.from_config(cfg.features)
    assert chunk_margin(frontend.cqt.radius, cfg.features.hop_length) <= budget.margin_bound(features)
    assert budget.kernel_values(features) <= budget.MAX_KERNEL_VALUES


@pytest.mark.parametrize("overrides", [
    ["model=cnn"], ["model=crnn_gru"], ["model=crnn_lstm", "model.num_layers=2", "model.temporal_pool=attention"],
    ["model=crnn_gru", "model.freq_pool=attention"], ["model=resnet"], ["model=vgg"], ["model=alexnet"],
    ["model=lenet"], ["model=cnn", "norm=pcen", "model.norm.trainable=true"]])
def test_the_closed_form_cost_equals_the_layer_summary(overrides):
    """Parameters, multiply-adds and the largest activation from block specs (no forward pass) are
    those `models.summary` measures on the built model; and the models of conf/ are far inside the budget."""
    from audiocnn.models.summary import summarize

    cfg = compose_config(overrides)
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    problem, cost = model_budget.model_cost(MODEL_CLASSES[spec["_target_"]], spec, 10, cfg.features.n_bins,
                                      cfg.features.window_frames, cfg.features.top_db)
    assert problem is None
    summary = summarize(build_model(cfg.model, 10, cfg.features.n_bins, cfg.features.top_db), cfg.features.n_bins,
                        cfg.features.window_frames)
    assert (cost.parameters, cost.macs) == (summary.total_params, summary.total_macs)
    assert cost.activation == max(math.prod(r.output_shape) for r in summary.rows if r.output_shape)
    assert cost.parameters * 50 < model_budget.MAX_PARAMETERS and cost.macs * 30 < model_budget.MAX_WINDOW_MACS
    assert cost.activation * 20 < model_budget.MAX_ACTIVATION


@pytest.mark.parametrize("key, value, message", [
    ("num_layers", 100_000, "model.num_layers=100000: at most 64"),
    ("blocks", [{"channels": 4}] * 65, "model.blocks: 65 items; at most 64"),
    ("hidden_size", 10 ** 9, "model.hidden_size=1000000000: at most 65,536"),
])
def test_arguments_that_would_take_long_to_build_are_refused_first(key, value, message):
    spec = {"_target_": "audiocnn.models.crnn.CRNN", "blocks": [{"channels": 4}], key: value}
    problem, _ = model_budget.model_cost(MODEL_CLASSES[spec["_target_"]], spec, 3, 84, 128)
    assert problem == message
