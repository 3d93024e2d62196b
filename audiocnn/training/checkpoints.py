"""Saved models: where their weights are, and loading them without unpickling code.

A source is a `model.pt` written by the train stage (or its folder), a Lightning
`.ckpt`, an MLflow `runs:/<run id>/model` or `models:/<name>/<version>` URI, or a bare
MLflow run id.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from audiocnn.models import build_model

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def weights_file(source: str) -> Path:
    """Local path of the weights named by `source` (downloads MLflow URIs)."""
    if RUN_ID.match(source) and not Path(source).exists():
        source = f"runs:/{source}/model"
    if source.startswith(("runs:/", "models:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
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


def load_state(source: str, prefix: str = "model.") -> dict[str, Tensor]:
    """The state dict in `source`; never unpickles code (`weights_only=True`).

    From a Lightning checkpoint of `Classifier`, the part under `prefix` (the model, or
    with `prefix="frontend."` the on-the-fly CQT).
    """
    loaded = torch.load(weights_file(source), map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded)
    if any(key.startswith(("model.", "frontend.")) for key in state):
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_trained(source: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by `train`: returns (model in eval mode, bundle).

    The bundle holds `state_dict`, the `model` and `features` configs and `classes`. A
    model trained on the fly (`features.on_the_fly`) comes back with its CQT front-end:
    it takes waveform windows `(batch, samples)`.
    """
    bundle = torch.load(weights_file(str(source)), map_location="cpu", weights_only=True)
    model = build_model(OmegaConf.create(bundle["model"]), len(bundle["classes"]), bundle["features"]["n_bins"],
                        bundle["features"].get("top_db"))
    model.load_state_dict(bundle["state_dict"])
    if bundle["features"].get("on_the_fly"):
        from audiocnn.features.cqt import CQTFrontend

        frontend = CQTFrontend.from_config(OmegaConf.create(bundle["features"]))
        frontend.load_state_dict(bundle["frontend"])
        model = nn.Sequential(frontend, model)
    return model.eval(), bundle
