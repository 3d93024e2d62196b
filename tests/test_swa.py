"""Stochastic weight averaging as a config switch: `+trainer/callbacks=swa` (conf/trainer/callbacks/swa.yaml)."""

from __future__ import annotations

import pytest
import torch

from audiocnn.config import ConfigError, compose_config, validate_config
from tests.conftest import tiny_config


def test_swa_is_off_by_default_and_the_switch_turns_early_stopping_off():
    assert "swa" not in compose_config([]).trainer.callbacks
    cfg = compose_config(["+trainer/callbacks=swa", "trainer.callbacks.swa.swa_lrs=3e-4"])
    swa = cfg.trainer.callbacks.swa
    assert swa._target_ == "lightning.pytorch.callbacks.StochasticWeightAveraging" and swa.swa_lrs == 3e-4
    assert cfg.trainer.callbacks.early_stopping is None  # training reaches swa_epoch_start: SWA always averages
    validate_config(cfg)
    with pytest.raises(ConfigError, match=r"^trainer\.callbacks\.swa: beside trainer\.callbacks\.early_stopping, "
                                          r"training can stop before swa_epoch_start .* drop one"):
        validate_config(compose_config(["+trainer/callbacks=swa", "trainer.callbacks.early_stopping="
                                        "{_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val_loss}"]))
    with pytest.raises(ConfigError, match=r"trainer\.callbacks\.swa\._target_=nope: must be the dotted path"):
        validate_config(compose_config(["+trainer/callbacks=swa", "trainer.callbacks.swa._target_=nope"]))
    with pytest.raises(ConfigError, match=r"trainer\.callbacks\.swa\.annealing_strategy=step: allowed: 'cos' or 'linear'"):
        validate_config(compose_config(["+trainer/callbacks=swa", "trainer.callbacks.swa.annealing_strategy=step"]))


def test_two_epochs_with_swa_train_and_save_the_averaged_weights(tmp_path, prepared_store, monkeypatch):
    """A real 2-epoch train stage with SWA from the first epoch: the callback is in the trainer, it averaged
    both epochs, and model.pt holds the average (not best.ckpt's weights)."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    from audiocnn.models.bundle import load_bundle, load_state
    from audiocnn.experiment import train_job, job_of
    from audiocnn.training import train as T

    cfg = tiny_config(tmp_path, "model=cnn", "+trainer/callbacks=swa", "trainer.callbacks.swa.swa_epoch_start=1",
                      "trainer.callbacks.swa.annealing_epochs=1")
    for key in ("raw", "prepared", "features"):
        cfg.paths[key] = prepared_store.paths[key]
    validate_config(cfg)
    built = {}
    build_trainer = T.build_trainer

    def keep(*args, **kwargs):
        built["trainer"], checkpoint = build_trainer(*args, **kwargs)
        return built["trainer"], checkpoint

    monkeypatch.setattr(T, "build_trainer", keep)
    summary = T.train(train_job(job_of(cfg)))
    swa = [c for c in built["trainer"].callbacks if isinstance(c, StochasticWeightAveraging)]
    assert len(swa) == 1 and int(swa[0].n_averaged) == 2
    assert summary["epochs"] == 2 and summary["best_val_loss"] == summary["best_val_loss"]  # finite, not NaN
    saved, _ = load_bundle(tmp_path / "models" / "model.pt")
    average = dict(swa[0]._average_model.model.named_parameters())
    for name, value in saved.named_parameters():
        torch.testing.assert_close(value, average[name].detach().cpu(), msg=name)
    best = load_state(tmp_path / "models" / "best.ckpt")
    assert any(not torch.equal(best[name], value) for name, value in saved.named_parameters())
