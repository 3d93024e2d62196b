"""Typed settings: `errors.parse_settings` turns a config group into its pydantic model or one line naming
the dotted key and the rule; the `evaluate` group's schema and its one check against the front-end."""

from __future__ import annotations

from typing import Annotated

import pytest
from omegaconf import OmegaConf
from pydantic import BaseModel, Field

from audiocnn.config import compose_config, validate_config
from audiocnn.errors import SETTINGS_CONFIG, ConfigError, parse_settings
from audiocnn.evaluation.settings import EvaluateSettings
from audiocnn.settings import prepare_settings, read_settings, store_settings
from audiocnn.models.tta import Views

class Inner(BaseModel):
    model_config = SETTINGS_CONFIG
    shifts: list[int] = [0]


class Group(BaseModel):
    model_config = SETTINGS_CONFIG
    rate: Annotated[float, Field(gt=0)] = 1.0
    count: Annotated[int, Field(gt=0)] = 1
    flag: bool = False
    inner: Inner | None = None


@pytest.mark.parametrize("values, message", [
    ({"rate": float("nan")}, "group.rate=nan: must be a finite number"),
    ({"rate": float("inf")}, "group.rate=inf: must be a finite number"),
    ({"rate": 0}, "group.rate=0: must be > 0"),
    ({"count": 3.0}, "group.count=3.0: must be an integer"),
    ({"count": True}, "group.count=true: must be an integer"),  # a bool is no number
    ({"flag": "yes"}, "group.flag=yes: allowed: true, false"),
    ({"colour": "red"}, "group.colour: unknown key; allowed: rate, count, flag, inner"),
    ({"inner": {"octaves": 1}}, "group.inner.octaves: unknown key; allowed: shifts"),
    ({"inner": {"shifts": [0, 0.5]}}, "group.inner.shifts[1]=0.5: must be an integer"),
    ({"inner": 2}, "group.inner=2: must be a mapping"),
])
def test_a_bad_setting_is_one_line_naming_the_dotted_key_and_the_rule(values, message):
    with pytest.raises(ConfigError) as error:
        parse_settings(Group, values, "group")
    assert str(error.value) == message


def test_settings_are_typed_frozen_and_default_where_absent():
    settings = parse_settings(Group, {"rate": 2, "inner": {"shifts": [1, 2]}}, "group")
    assert settings.rate == 2 and settings.count == 1 and settings.inner.shifts == [1, 2]
    assert parse_settings(Group, None, "group") == Group()
    with pytest.raises(ValueError):
        settings.rate = 3.0


def test_the_evaluate_group_reads_into_its_settings_with_the_conf_defaults():
    settings = read_settings(compose_config([])).evaluate
    assert isinstance(settings, EvaluateSettings)
    assert settings.top_k == [1, 3] and settings.calibration_bins == 15 and settings.explain is True
    assert settings.views == Views()  # conf/'s tta [0] x [0]: the identity
    views = read_settings(compose_config(["evaluate.tta.pitch_bins=[-1,0,1]"])).evaluate.views
    assert views.shifts == [(-1, 0), (0, 0), (1, 0)]


@pytest.mark.parametrize("overrides, message", [
    # the rules of the schema, through the one validation of a job
    (["evaluate.top_k=[0]"], "evaluate.top_k[0]=0: must be > 0"),
    (["evaluate.bootstrap_seed=-1"], "evaluate.bootstrap_seed=-1: must be >= 0"),
    (["evaluate.calibration_bins=nan"], "evaluate.calibration_bins=nan: must be an integer"),
    (["evaluate.tta.pitch_bins=[1,1]"], "evaluate.tta.pitch_bins=[1, 1]: the shifts must be distinct"),
    (["+evaluate.colour=red"], "evaluate.colour: unknown key; allowed: top_k, calibration_bins"),
    # the domain check: a view's shift must leave something of the window (84 bins x 128 frames)
    (["evaluate.tta.pitch_bins=[-84,0]"], "evaluate.tta.pitch_bins=[-84, 0]: each shift must be smaller than the "
                                          "window's 84 bins"),
    (["evaluate.tta.time_frames=[0,128]"], "evaluate.tta.time_frames=[0, 128]: each shift must be smaller than the "
                                           "window's 128 frames"),
    (["features.window_frames=200", "evaluate.tta.time_frames=[0,128]"], None),  # a wider window takes it
])
def test_validate_config_reads_the_evaluate_group_once_with_its_domain_check(overrides, message):
    cfg = compose_config(overrides)
    if message is None:
        validate_config(cfg)
        return
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["features.trainable=true"], "features.trainable=true: needs features.on_the_fly=true"),
    (["features.n_bins=200"], "features.n_bins=200: top bin"),  # above Nyquist: the budget's check, as for model files
    (["features.window_frames=5000"], "features.window_frames=5000: at most 4096"),
    (["features.device=tpu"], "features.device=tpu: allowed: 'auto', 'cpu' or 'cuda'"),
    (["features.sr=16000.5"], "features.sr=16000.5: must be an integer"),
    (["features.num_workers=-1"], "features.num_workers=-1: must be >= 0"),
    (["+features.colour=red"], "features.colour: unknown key; allowed: sr, hop_length, fmin, n_bins"),
])
def test_the_features_group_reads_into_its_schema_with_the_front_end_checks(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_config(overrides))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_features_group_reads_into_typed_settings():
    settings = read_settings(compose_config(["features=speech"])).features
    assert (settings.sr, settings.hop_length, settings.top_db, settings.device) == (8000, 128, 40.0, "auto")
    assert isinstance(settings.fmin, float) and isinstance(settings.n_bins, int)


def test_each_data_source_reads_its_own_keys_and_refuses_another_sources():
    """One schema per source (`data.sources.parse_data`): the keys it shares with every source, its own, and
    nothing else (before, a key of any source passed for every source and was ignored)."""
    from audiocnn.data.settings import DatasetCopy
    from audiocnn.data.sources import parse_data

    fsdd = parse_data({"name": "fsdd", "root": None, "download": {"url": "https://example.org/fsdd.tar.gz"}})
    assert isinstance(fsdd, DatasetCopy) and fsdd.sr == 8000 and fsdd.download.timeout_s == 60
    assert fsdd.download.checksum is None and fsdd.val_fraction == 0.15 and fsdd.fold is None
    with pytest.raises(ConfigError, match=r"^data\.esc10: unknown key; allowed: name, fold, protocol"):
        parse_data({"name": "demo", "esc10": True})
    with pytest.raises(ConfigError, match=r"^data\.name=nope: allowed: csv, demo, demo_events"):
        parse_data({"name": "nope"})
    with pytest.raises(ConfigError, match=r"^data\.fold=true: must be null or a fold of the dataset"):
        parse_data({"name": "demo", "fold": True})
    assert parse_data({"name": "demo", "fold": 3, "val_groups": [7, "ann"]}).val_groups == [7, "ann"]
    with pytest.raises(ConfigError, match=r"^data\.min_duration=5\.0: must be <= data\.max_duration=4\.0$"):
        parse_data({"name": "demo_mix", "min_duration": 5.0})


def test_a_composed_config_reads_into_one_typed_settings_object_that_builds_each_stage_input():
    """`read_settings` reads every group with its schema once; the stage inputs it builds are those the
    one-stage readers (`prepare_settings`, `store_settings`: DVC's prepare and featurize) build."""
    from audiocnn.data.settings import DataSettings
    from audiocnn.features.settings import FeatureSettings
    from audiocnn.inference.requests import Limits
    from audiocnn.models.settings import CRNNSettings, NoNorm
    from audiocnn.training.augment import AugmentSettings
    from audiocnn.training.optim import OptimizerSettings, SchedulerSettings
    from audiocnn.training.settings import TrainerSettings
    from audiocnn.validation.tracking_uri import TrackingSettings

    cfg = compose_config(["data=demo", "model=crnn_gru", "optimizer=sgd", "scheduler=plateau", "augment=specaugment"])
    settings = read_settings(cfg)
    expected = {"data": DataSettings, "features": FeatureSettings, "trainer": TrainerSettings,
                "optimizer": OptimizerSettings, "scheduler": SchedulerSettings, "model": CRNNSettings,
                "augment": AugmentSettings, "evaluate": EvaluateSettings, "serving": Limits, "tracking": TrackingSettings}
    assert [name for name, kind in expected.items() if not isinstance(getattr(settings, name), kind)] == []
    assert settings.optimizer.arguments() == {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9,
                                              "nesterov": False, "weight_decay": 5e-4}
    assert settings.scheduler.arguments()["_target_"] == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    assert settings.model.norm == NoNorm() and settings.model.config() == OmegaConf.to_container(cfg.model, resolve=True)
    assert sorted(settings.augment.transforms) == ["freq_mask", "time_mask"]
    assert settings.prepare() == prepare_settings(cfg) and settings.store() == store_settings(cfg)
    assert (settings.loader().batch_size, settings.loader().seed) == (cfg.trainer.batch_size, cfg.seed)
    assert settings.config == OmegaConf.to_container(cfg, resolve=True)
