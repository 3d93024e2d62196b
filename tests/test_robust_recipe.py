"""The defaults are the robust recipe's training (issue #27), `experiment=robust`
(conf/experiment/robust.yaml) adds the test-time views: every piece each names is in the
composed config, the old defaults are one override away, and a tiny training and evaluation
run with all of them at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audiocnn.config import compose_config, validate_config
from audiocnn.evaluation.evaluate import evaluate
from audiocnn.experiment import evaluate_job, job_of
from audiocnn.models.bundle import load_bundle
from tests.conftest import tiny_config, train


RECIPE_TRANSFORMS = {"time_shift", "freq_mask", "time_mask", "mixup", "eq", "tilt", "reverb", "freq_warp"}


@pytest.mark.parametrize("data", ["demo", "fsdd", "folder", "csv"])
def test_every_dataset_trains_with_the_recipe_by_default_and_scores_one_view(data):
    cfg = compose_config([f"data={data}"])
    assert set(cfg.augment.transforms) == RECIPE_TRANSFORMS and cfg.scheduler.name == "cosine"
    assert list(cfg.evaluate.tta.pitch_bins) == [0] and list(cfg.evaluate.tta.time_frames) == [0]
    assert "swa" not in cfg.trainer.callbacks and cfg.trainer.callbacks.early_stopping is not None


def test_the_old_defaults_are_one_override_away():
    cfg = compose_config(["augment=none", "scheduler=none"])
    validate_config(cfg)
    assert not cfg.augment.get("transforms") and "_target_" not in cfg.scheduler


def test_the_robust_recipe_composes_every_piece_it_names():
    cfg = tiny_config(Path("/nonexistent"), "experiment=robust")
    assert set(cfg.augment.transforms) == RECIPE_TRANSFORMS
    assert cfg.model.norm.type == "none" and cfg.features.top_db == compose_config([]).features.top_db
    assert "swa" not in cfg.trainer.callbacks and cfg.trainer.callbacks.early_stopping is not None
    assert cfg.scheduler.name == "cosine"
    assert list(cfg.evaluate.tta.pitch_bins) == [-1, 0, 1]
    validate_config(cfg)
    fsdd = compose_config(["data=fsdd", "experiment=robust"])
    assert fsdd.features.top_db == 40, "the speech front-end's per-window peak normalisation stays"


@pytest.mark.slow  # 10-20 s: make test-slow and CI run it (#24: make test at most 12 min)
def test_a_tiny_robust_training_trains_evaluates_and_keeps_its_views(prepared_store, tmp_path):
    cfg = tiny_config(tmp_path, "experiment=robust", "trainer.max_epochs=3",
                      f"paths.prepared={prepared_store.paths.prepared}", f"paths.raw={prepared_store.paths.raw}")
    validate_config(cfg)
    train(cfg)
    metrics = evaluate(evaluate_job(job_of(cfg)))
    _, bundle = load_bundle(Path(cfg.paths.models) / "model.pt")
    assert bundle["model"]["norm"]["type"] == "none"
    assert all(torch.isfinite(t).all() for t in bundle["state_dict"].values() if t.is_floating_point())
    saved = json.loads((Path(cfg.paths.metrics) / "test.json").read_text())
    assert saved["tta"] == "pitch_bins=[-1, 0, 1], time_frames=[0]" and 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.slow  # 10-20 s: make test-slow and CI run it (#24: make test at most 12 min)
@pytest.mark.parametrize("preset", ["robust", "defaults"])
def test_every_row_of_an_ablation_preset_composes_and_validates(tmp_path, preset):
    """benchmarks/augment_ablation.py --preset robust / defaults: each row is a valid FSDD
    leave-one-speaker-out config (a typo in a row would cost an hour of CPU before it failed)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import augment_ablation

    rows = augment_ablation.PRESETS[preset]
    pieces = augment_ablation.ROBUST_PIECES if preset == "robust" else augment_ablation.DEFAULTS_ROWS
    assert len(rows) == 3 * len(pieces) and all(f"{piece}:seed=2" in rows for piece in pieces)
    (tmp_path / "recordings").mkdir()
    for config in rows:
        cfg = compose_config(["data=fsdd", f"data.root={tmp_path}", "data.fold=theo",
                              *augment_ablation.DEFAULT_OVERRIDES, *augment_ablation.config_overrides(config)])
        validate_config(cfg)
        compose_config([f"paths.models={augment_ablation.cell_dir(tmp_path, config)}/model"])  # a path Hydra takes
        if config.startswith(("experiment=robust", "defaults")):
            assert set(cfg.augment.transforms) == RECIPE_TRANSFORMS and cfg.scheduler.name == "cosine"
        if config.startswith("experiment=robust"):
            assert list(cfg.evaluate.tta.pitch_bins) == [-1, 0, 1]
        if config.startswith("none:scheduler=none"):  # the old defaults
            assert not cfg.augment.get("transforms") and "_target_" not in cfg.scheduler
    # a row that differs from another only in evaluate.* scores that row's model, so it must come after it
    tta = "specaugment+time_shift+mixup:evaluate.tta.pitch_bins=[-1,0,1]:seed=1"
    assert augment_ablation.evaluation_base(tta) == "specaugment+time_shift+mixup:seed=1"
    for i, config in enumerate(rows):
        base = augment_ablation.evaluation_base(config)
        assert base == config or base in rows[:i], config
