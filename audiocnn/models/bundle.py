"""`model.pt`, the trained-model bundle: written by the train stage, read by every consumer.

A bundle is plain data and tensors (it loads with `torch.load(weights_only=True)`):
    format       BUNDLE_FORMAT
    state_dict   {name: tensor}  the model's weights, its front-end's included (`frontend.*`: the CQT
                 kernels of a model trained on the fly; nothing for stored frames, `nn.Identity`)
    model        the `model` config: `_target_` (one of MODEL_CLASSES) and its arguments
    features     the `features` config (sr, hop_length, fmin, n_bins, ..., window_frames)
    classes      [class name, ...] in logit order
    frontend_version  `features.cqt.FRONTEND_VERSION` of the frames it was trained on (stored or on
                 the fly); a model file of another version is refused, saying to re-featurize and retrain
    temperature  float > 0, optional (1.0 when absent: bundles written before it load as they were):
                 the logits are divided by it before the softmax (`trainer.calibrate=temperature`,
                 `training.temperature`); every consumer applies it through `temperature(bundle)`
    task         "multiclass" (softmax over the classes; the default when absent), "multilabel"
                 (a sigmoid per class: multi-label data, `models.scorer`) or "events" (sound event
                 detection, docs/events.md: a CRNN with `clip_output: event_pool`, refused otherwise;
                 a sigmoid per class on the clip probabilities its event pooling gives)
    thresholds   multi-label and events only, optional: [float in [0, 1], ...] one per class, in class
                 order, fitted on the validation clips (`training.thresholds`); a class is predicted
                 when its probability is at least its threshold
    events       events only, optional: {"time_stride": CQT frames per output frame, "frame_seconds":
                 seconds per output frame} (`data.task.events_problem` checks them): what turns the
                 frame outputs into times

A model file is untrusted data: it may come from a registry or a colleague. It is never
passed to `hydra.utils.instantiate`; `build_from_bundle` checks its schema first and
builds only audiocnn's own model classes (MODEL_CLASSES) with arguments their
constructors declare, so no mapping in a file can name code to run. Anything else is
refused with a `BundleError` naming the offending key.

Nor can its numbers exhaust memory: a file is read in two passes. The first reads the zip
directory and the pickle only (`torch.load(map_location="meta")`: tensors with shapes and no
data) and checks the resource budget (`features.budget`, `models.budget`): settings within the ranges conf
validation allows, the model's parameters and per-window work computed on the meta device, and
the declared sizes of the stored tensors against what the pickle describes and what the
architecture needs. Only then are the tensors read.

A *source* is a `model.pt` (or its folder), a Lightning `.ckpt`, an MLflow
`runs:/<run id>/model` or `models:/<name>/<version|alias>` URI, or a bare MLflow run id.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from audiocnn import atomic
from audiocnn.errors import BundleError, ConfigError
from audiocnn.features.budget import SLACK_BYTES, classes_problem, features_problem, human
from audiocnn.features.cqt import FRONTEND_VERSION
from audiocnn.models.settings import model_settings, window_problem
from audiocnn.models.budget import ModelCost, Stored, model_cost, stored_tensors
from audiocnn.models import DESCRIPTIVE_KEYS, build_frontend
from audiocnn.models.cnn import CNN
from audiocnn.models.crnn import CRNN
from audiocnn.data.task import EVENTS, MULTICLASS, task_problem

# 2: timm-style head (`head.fc`), `global_pool: catavgmax`. 3: the front-end inside the model
# (`frontend.*` in state_dict, no `frontend` entry, no `nn.Sequential`), `frontend_version` recorded.
BUNDLE_FORMAT = 3
MODEL_CLASSES: dict[str, type[nn.Module]] = {"audiocnn.models.cnn.CNN": CNN, "audiocnn.models.crnn.CRNN": CRNN}
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PLAIN = (str, int, float, bool, type(None))


def weights_file(source: str | Path) -> Path:
    """Local path of the `model.pt` / checkpoint named by `source` (downloads MLflow URIs)."""
    source = str(source)
    if RUN_ID.match(source) and not Path(source).exists():
        source = f"runs:/{source}/model"
    if source.startswith(("runs:/", "models:/")):
        from urllib.parse import urlsplit

        import mlflow

        stores = [mlflow.get_tracking_uri()] + ([mlflow.get_registry_uri()] if source.startswith("models:/") else [])
        for store in stores:  # a SQLite store that does not exist holds no run; opening it would create it
            database = store.removeprefix("sqlite:///") if store.startswith("sqlite:///") else None
            if database and not Path(database).is_file():
                raise FileNotFoundError(f"{source}: no such model: the MLflow store {database} does not exist "
                                        "(nothing was logged there); give the store that holds it with "
                                        "--tracking-uri or MLFLOW_TRACKING_URI")
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        except mlflow.exceptions.MlflowException as error:  # an unknown run, model or version: one line
            netloc = urlsplit(stores[-1]).netloc  # shown without credentials (user:password@)
            shown = stores[-1].replace(netloc, netloc.rpartition("@")[2], 1) if "@" in netloc else stores[-1]
            reason = (str(error.message).strip().splitlines() or [type(error).__name__])[0]
            raise FileNotFoundError(f"{source}: {reason} (MLflow store {shown})") from None
        found = [local] if local.is_file() else sorted(local.rglob("model.pt"))
        if not found:
            raise FileNotFoundError(f"{source}: no model.pt in this MLflow model "
                                    "(was it logged with tracking.log_model=true?)")
        return found[0]
    path = Path(source)
    path = path / "model.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{source}: {path} does not exist")
    return path


def _load(path: Path, device: str) -> dict:
    """`torch.load(weights_only=True)` onto `device`. On `meta` only the pickle is read: every tensor
    comes back with its shape, dtype and storage size, and no data (nothing is inflated)."""
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - a pickle that wants code, or not a torch file at all
        raise BundleError(f"{path}: not a model file audiocnn can read safely ({str(error).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise BundleError(f"{path}: a model file holds a mapping, not {type(loaded).__name__}")
    return loaded


def _tensors(value: Any, seen: set[int] | None = None) -> list[Tensor]:
    """Every tensor inside mappings and lists of `value`, each container visited once."""
    seen = set() if seen is None else seen
    if isinstance(value, Tensor):
        return [value]
    if id(value) in seen or not isinstance(value, (Mapping, list, tuple)):
        return []
    seen.add(id(value))
    items = value.values() if isinstance(value, Mapping) else value
    return [tensor for item in items for tensor in _tensors(item, seen)]


def _skeleton(path: Path) -> tuple[dict, Stored]:
    """The model file at `path` without its tensor data: its contents with meta tensors, and its zip
    directory. Refused (`BundleError`) before anything is inflated: what `stored_tensors`
    refuses (a pickle or entries too big, an entry that inflates like a zip bomb), and entries that
    declare more bytes than the tensors its pickle describes (torch inflates a whole entry first)."""
    problem, stored = stored_tensors(path)
    if problem:
        raise BundleError(f"{path}: {problem}")
    skeleton = _load(path, "meta")
    described = sum(tensor.untyped_storage().nbytes() for tensor in _tensors(skeleton))
    if stored.is_zip and stored.tensor_bytes > described + SLACK_BYTES:
        raise BundleError(f"{path}: its tensor entries declare {human(stored.tensor_bytes)} "
                          f"({stored.largest()}); its pickle describes {human(described)} of tensors")
    return skeleton, stored


def _read(path: Path) -> dict:
    """The bundle at `path`: checked on its skeleton (`check_bundle`: settings, classes, the model's
    budget and its tensors' shapes) and its stored sizes against what the architecture needs, all
    before a tensor is inflated; then loaded."""
    skeleton, stored = _skeleton(path)
    cost = _check(skeleton, str(path))
    needed = cost.state_bytes  # the front-end's kernels included
    if stored.is_zip and stored.tensor_bytes > needed + SLACK_BYTES:
        raise BundleError(f"{path}: stores {human(stored.tensor_bytes)} of tensors ({stored.largest()}); "
                          f"its model needs {human(needed)}")
    return _load(path, "cpu")


def _check_state(state: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                  for k, v in state.items()):
        raise BundleError(f"{where}: must map parameter names to tensors")
    return dict(state)


def _check_plain(value: Any, where: str, seen: set[int] | None = None) -> None:
    """Only numbers, strings, booleans, None and lists / string-keyed mappings of them; no `_target_`.
    A container the pickle shares between places is walked once (no exponential walk)."""
    seen = set() if seen is None else seen
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in seen:
            return
        seen.add(id(value))
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or key == "_target_":
                raise BundleError(f"{where}.{key}: not allowed in a model file (model files are data, not code)")
            _check_plain(item, f"{where}.{key}", seen)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]", seen)
    elif not isinstance(value, PLAIN) or (isinstance(value, float) and not math.isfinite(value)):
        raise BundleError(f"{where}={value!r}: not a plain finite value")


def check_bundle(bundle: dict, where: str = "model.pt") -> None:
    """Raise `BundleError` naming the first key of `bundle` that is not what audiocnn writes, or the
    setting that takes it over the resource budget (`features.budget`, `models.budget`)."""
    _check(bundle, where)


def _check(bundle: dict, where: str) -> ModelCost:
    """`check_bundle`, returning what the model needs (the architecture built on the meta device)."""
    _check_versions(bundle, where)
    for key in ("state_dict", "model", "features", "classes"):
        if key not in bundle:
            raise BundleError(f"{where}: {key}: missing")
    state = _check_state(bundle["state_dict"], f"{where}: state_dict")
    model = bundle["model"]
    if not isinstance(model, Mapping):
        raise BundleError(f"{where}: model={model!r:.40}: must be a mapping")
    _check_plain({k: v for k, v in model.items() if k != "_target_"}, f"{where}: model")
    try:  # the schema conf's `model` group is read with (`models.settings`)
        settings = model_settings(dict(model))
    except ConfigError as error:
        raise BundleError(f"{where}: {error}") from None
    features = bundle["features"]
    _check_plain(features, f"{where}: features")
    problem = features_problem(features)
    if problem:
        raise BundleError(f"{where}: {problem}")
    value = bundle.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BundleError(f"{where}: temperature={value!r}: must be a finite number > 0")
    classes = bundle["classes"]
    problem = classes_problem(classes)
    if problem:
        raise BundleError(f"{where}: {problem}")
    problem = task_problem(bundle, len(classes))
    if problem:
        raise BundleError(f"{where}: {problem}")
    if bundle.get("task") == EVENTS and (MODEL_CLASSES[model["_target_"]] is not CRNN
                                         or model.get("clip_output") != "event_pool"):
        raise BundleError(f"{where}: task='events': needs a CRNN scoring clips by its event pooling "
                          f"(model.clip_output='event_pool'); this is {model['_target_']} with "
                          f"clip_output={model.get('clip_output', 'head')!r:.40}")
    problem = window_problem(settings, int(features["n_bins"]), int(features["window_frames"]), features.get("top_db"))
    if problem:
        raise BundleError(f"{where}: {problem}")
    problem, cost = model_cost(MODEL_CLASSES[model["_target_"]], model, len(classes), int(features["n_bins"]),
                               int(features["window_frames"]), features.get("top_db"), features)
    if problem:
        raise BundleError(f"{where}: {problem}")
    for key, tensor in state.items():
        if key not in cost.state:
            raise BundleError(f"{where}: state_dict.{key}: not a tensor of this model ({model['_target_']})")
        if tuple(tensor.shape) != cost.state[key][0]:
            raise BundleError(f"{where}: state_dict.{key}: shape {list(tensor.shape)}; the model's settings make it "
                              f"{list(cost.state[key][0])}")
    missing = [key for key in cost.state if key not in state]
    if missing:
        raise BundleError(f"{where}: state_dict.{missing[0]}: missing ({len(missing)} of the model's tensors are)")
    return cost


def _check_versions(bundle: Mapping, where: str) -> None:
    """`BundleError` for a model file of another bundle format or front-end version: one line saying
    to retrain (and, for stored frames, to featurize again)."""
    if bundle.get("format") != BUNDLE_FORMAT:
        layout = (" (it keeps the front-end apart from the model, and does not record the front-end version)"
                  if bundle.get("format") == 2 else "")
        raise BundleError(f"{where}: format={bundle.get('format', 1)!r}: this audiocnn reads bundle format "
                          f"{BUNDLE_FORMAT}{layout}; retrain the model (or load it with the audiocnn that wrote it)")
    version = bundle.get("frontend_version")
    if version != FRONTEND_VERSION:
        raise BundleError(f"{where}: frontend_version={version!r}: the model was trained on the frames of another "
                          f"front-end; this audiocnn's is version {FRONTEND_VERSION} (features.cqt.FRONTEND_VERSION): "
                          "featurize again and retrain the model")


def build_from_bundle(bundle: dict, where: str = "model.pt") -> nn.Module:
    """The bundle's model with its weights (its front-end's included), in eval mode: it takes windows
    of stored frames `(batch, 1, n_bins, frames)`, or, trained on the fly, waveform windows
    `(batch, samples)` (`models.head`)."""
    check_bundle(bundle, where)
    spec = bundle["model"]
    arguments = {k: v for k, v in spec.items() if k not in (*DESCRIPTIVE_KEYS, "_target_")}
    features = bundle["features"]
    try:
        model = MODEL_CLASSES[spec["_target_"]](n_classes=len(bundle["classes"]), n_bins=int(features["n_bins"]),
                                                top_db=features.get("top_db"), frontend=build_frontend(features),
                                                **arguments)
        model.load_state_dict(bundle["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise BundleError(f"{where}: does not build: {str(error).splitlines()[0]}") from None
    return model.eval()


def temperature(bundle: dict) -> float:
    """The temperature the bundle's logits are divided by (1.0 for an uncalibrated model)."""
    return float(bundle.get("temperature", 1.0))


def load_bundle(source: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, bundle) for a model `source` (see the module docstring)."""
    path = weights_file(source)
    bundle = _read(path)
    return build_from_bundle(bundle, str(path)), bundle


def load_state(source: str | Path, prefix: str = "model.") -> dict[str, Tensor]:
    """The weights in `source`, a bundle or a Lightning checkpoint (`state_dict` under `prefix`,
    e.g. `model.`). Tensors only; never code. Its entries are checked against the pickle and the
    budget's total before any is inflated (`_skeleton`): what protects `model.init_from`, whose
    source may be any model file. A bundle of another format or front-end version is refused
    (`BundleError`, saying to retrain)."""
    path = weights_file(source)
    skeleton, _ = _skeleton(path)
    if "format" in skeleton:  # a bundle (a Lightning checkpoint records neither)
        _check_versions(skeleton, str(path))
    _check_state(skeleton.get("state_dict", skeleton), f"{path}: state_dict")
    loaded = _load(path, "cpu")
    state = _check_state(loaded.get("state_dict", loaded), f"{path}: state_dict")
    if any(key.startswith(("model.", "frontend.")) for key in state):
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return state


def save_bundle(model: nn.Module, model_cfg: dict, features_cfg: dict, classes: list[str], path: Path,
                frontend: nn.Module | None = None, temperature: float = 1.0, task: str = MULTICLASS,
                thresholds: list[float] | None = None, events: dict | None = None) -> Path:
    """Write `model.pt` atomically: `model`'s weights (its front-end's included) plus the plain configs
    that rebuild it. `frontend`: a front-end trained beside a `model` built without one (its state is
    written as the model's `frontend.*`). `task`, `thresholds` and `events`: see the module docstring."""
    state = model.state_dict()
    if frontend is not None:
        if any(key.startswith("frontend.") for key in state):
            raise ValueError("save_bundle: the model has a front-end of its own; give no other")
        state.update({f"frontend.{key}": value for key, value in frontend.state_dict().items()})
    bundle = {"format": BUNDLE_FORMAT, "frontend_version": FRONTEND_VERSION, "state_dict": state,
              "model": dict(model_cfg), "features": dict(features_cfg), "classes": [str(c) for c in classes],
              "temperature": float(temperature), "task": task,
              **({"thresholds": [float(t) for t in thresholds]} if thresholds is not None else {}),
              **({"events": dict(events)} if events is not None else {})}
    check_bundle(bundle, str(path))  # what we write, we can read back
    with atomic.atomic_path(path) as tmp:
        torch.save(bundle, tmp)
    return Path(path)
