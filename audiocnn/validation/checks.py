"""Checks across groups and of the machine, run on settings each of which passed its own schema."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from audiocnn.errors import ConfigError

if TYPE_CHECKING:  # importing the models loads torch: the CLI's ONNX path must not
    from audiocnn.features.settings import FeatureSettings
    from audiocnn.models.settings import CNNSettings, CRNNSettings
    from audiocnn.training.settings import TrainerSettings


def validate_hardware(features: FeatureSettings, trainer: TrainerSettings) -> None:
    """`features.device=cuda` and `trainer.accelerator=gpu|cuda|mps` need that device here."""
    import torch

    cuda = torch.cuda.is_available()
    if features.device == "cuda" and not cuda:
        raise ConfigError("features.device=cuda: no CUDA GPU is available here; allowed here: auto, cpu")
    accelerator = trainer.accelerator
    mps = getattr(torch.backends, "mps", None)
    if (accelerator in ("gpu", "cuda") and not cuda) or (accelerator == "mps" and not (mps and mps.is_available())):
        raise ConfigError(f"trainer.accelerator={accelerator}: no such device is available here; allowed here: "
                          f"auto, cpu{', gpu, cuda' if cuda else ''}")


def validate_model(values, features: FeatureSettings) -> CNNSettings | CRNNSettings:
    """The `model` group (plain values) read as its class's settings, then checked against the front-end:
    the file `init_from` names, one input normalisation, the blocks' shapes on the window, the model's
    cost (`models.budget`, before anything is allocated), one forward pass of the model built."""
    import torch

    from audiocnn.models import build_model
    from audiocnn.models.budget import model_cost
    from audiocnn.models.bundle import MODEL_CLASSES
    from audiocnn.models.settings import model_settings, window_problem

    settings = model_settings(values)
    source = settings.init_from
    if source and not source.startswith(("runs:/", "models:/")) and not Path(source).exists():
        raise ConfigError(f"model.init_from={source}: no such file or folder")
    problem = window_problem(settings, features.n_bins, features.window_frames, features.top_db)
    if problem:
        raise ConfigError(problem)
    window = (features.n_bins, features.window_frames)
    config = settings.config()
    problem, _ = model_cost(MODEL_CLASSES[settings.target], config, 2, *window, features.top_db)
    if problem and not problem.startswith("does not build"):  # too big: refused before anything is allocated
        raise ConfigError(problem)
    try:  # building and one forward pass are cheap (within the budget) and check what the shapes do not
        model = build_model(config, n_classes=2, n_bins=features.n_bins, top_db=features.top_db).eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, *window))
    except Exception as error:  # noqa: BLE001 - hydra wraps the constructor's error; report its cause
        cause = error.__cause__ or error
        raise ConfigError(f"model: {str(cause).splitlines()[0]}") from None
    return settings
