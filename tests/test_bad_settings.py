"""Every setting is checked before any work: NaN, inf, wrong types, out-of-range and unknown keys fail in
`validate_config` with one line that starts with the setting's dotted name and says what is allowed."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from importlib import import_module

import pytest
from omegaconf import OmegaConf, open_dict

from audiocnn.config import ConfigError, compose_config, config_groups, validate_config
from audiocnn.data.settings import Download
from audiocnn.data.sources import SOURCES
from audiocnn.evaluation.settings import EvaluateSettings, TTASettings
from audiocnn.features.settings import FeatureSettings
from audiocnn.training.settings import TrainerSettings
from audiocnn.validation.tracking_uri import TrackingSettings
from audiocnn.models.settings import NORMS, MODEL_SCHEMAS
from audiocnn.training.optim import OptimizerSettings, SchedulerSettings
from audiocnn.settings import PathsSettings, RunSettings
from tests.conftest import REPO

FOLDER = [f"data.root={REPO / 'tests'}"]
SWA = "+trainer.callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging"  # +trainer/callbacks=swa
SWA_LR = "+trainer.callbacks.swa.swa_lrs=1e-3"

BAD = [
    # the cases of the issue
    (["optimizer.lr=nan"], "optimizer.lr=nan: must be a finite number"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: must be a finite number"),
    (["features.amin=nan"], "features.amin=nan: must be a finite number"),
    (["features.amin=inf"], "features.amin=inf: must be a finite number"),
    (["features.top_db=nan"], "features.top_db=nan: must be a finite number"),
    (["features.top_db=inf"], "features.top_db=inf: must be a finite number"),
    (["features.fmin=nan"], "features.fmin=nan: must be a finite number"),
    (["features.fmin=inf"], "features.fmin=inf: must be a finite number"),
    (["trainer.max_epochs=nan"], "trainer.max_epochs=nan: must be an integer"),
    (["trainer.num_workers=-1"], "trainer.num_workers=-1: must be >= 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1: must be >= 0"),
    (["trainer.accelerator=tpu"], "trainer.accelerator=tpu: allowed: 'auto', 'cpu', 'gpu', 'cuda' or 'mps'"),
    (["seed=abc"], "seed=abc: must be an integer"),
    # trainer (its schema, training.settings.TrainerSettings: the rules no plain type or range says)
    (["trainer.seeds=[1,1]"], "trainer.seeds=[1, 1]: must hold distinct items"),
    (["trainer.devices=0"], "trainer.devices=0: allowed: auto, a positive number of devices, -1 (all)"),
    (["trainer.devices=[0,-2]"], "trainer.devices=[0, -2]: allowed: auto, a positive number of devices, -1 (all)"),
    (["trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn: allowed: 'auto', 'ddp' or "
                                     "'ddp_find_unused_parameters_true'"),
    (["trainer.precision=16"], "trainer.precision=16: allowed: 32-true, 32, bf16-mixed"),
    (["trainer.deterministic=sometimes"], "trainer.deterministic=sometimes: allowed: true, false, warn"),
    (["trainer.event_median_frames=[1,4]"], "trainer.event_median_frames[1]=4: must be odd"),
    (["trainer.callbacks.early_stopping._target_=nope"], "trainer.callbacks.early_stopping._target_=nope: must be "
                                                         "the dotted path of an installed callback class"),
    (["trainer.callbacks=3"], "trainer.callbacks=3: must be a mapping"),
    ([SWA], "trainer.callbacks.swa.swa_lrs: missing"),
    ([SWA, "+trainer.callbacks.swa.swa_lrs=0"], "trainer.callbacks.swa.swa_lrs=0: must be > 0"),
    ([SWA, SWA_LR, "+trainer.callbacks.swa.swa_epoch_start=1.5"],
     "trainer.callbacks.swa.swa_epoch_start=1.5: must be an epoch number >= 1 or a fraction in (0, 1]"),
    ([SWA, SWA_LR, "+trainer.callbacks.swa.lr=1"],
     "trainer.callbacks.swa.lr: unknown key; allowed: swa_lrs, swa_epoch_start"),
    (["trainer.resume=maybe"], "trainer.resume=maybe: allowed: true, false"),
    (["+trainer.fast_dev_run=true"], "trainer.fast_dev_run: unknown key; allowed: max_epochs, batch_size"),
    (["~trainer.max_epochs"], "trainer.max_epochs: missing"),
    # optimizer
    (["optimizer.backbone_lr_scale=0"], "optimizer.backbone_lr_scale=0: must be > 0"),
    (["optimizer.name=''"], "optimizer.name=: must be a non-empty string"),
    (["optimizer._target_=os.system"], "optimizer._target_=os.system: not a torch.optim.Optimizer class"),
    (["optimizer._target_=torch.optim.Nope"], "optimizer._target_=torch.optim.Nope: not a torch.optim.Optimizer"),
    (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5: must be < 1"),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], "optimizer.nesterov=true: needs "
                                                                            "optimizer.momentum > 0"),
    (["optimizer=sgd", "optimizer.nesterov=yes"], "optimizer.nesterov=yes: allowed: true, false"),
    (["optimizer=sgd", "+optimizer.dampening=2"], "optimizer.dampening=2: at most 1"),
    (["+optimizer.amsgrad=1"], "optimizer.amsgrad=1: allowed: true, false"),
    (["optimizer=adadelta", "optimizer.rho=2"], "optimizer.rho=2: at most 1"),
    (["optimizer=adadelta", "optimizer.eps=0"], "optimizer.eps=0: must be > 0"),
    (["+optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]: must be a pair of numbers in [0, 1)"),
    (["+optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: must be a pair of numbers in [0, 1)"),
    (["+optimizer.maximize=nan"], "optimizer.maximize=nan: must be a finite number, true/false"),
    (["+optimizer.colour=red"], "optimizer.colour: not an argument of torch.optim.AdamW; allowed: amsgrad, betas"),
    (["optimizer=sgd", "+optimizer.amsgrad=true"], "optimizer.amsgrad: not an argument of torch.optim.SGD"),
    (["~optimizer.lr"], "optimizer.lr: missing"),
    # scheduler (its keys' ranges; the keys themselves: tests/test_optim.py)
    (["scheduler=plateau", "scheduler.factor=nan"], "scheduler.factor=nan: must be a finite number"),
    (["scheduler=cosine", "scheduler.warmup_start_factor=abc"], "scheduler.warmup_start_factor=abc: must be"),
    (["scheduler=cosine", "scheduler.min_lr_factor=0"], "scheduler.min_lr_factor=0: must be > 0"),
    (["scheduler=onecycle", "scheduler.pct_start=inf"], "scheduler.pct_start=inf: must be a finite number"),
    (["scheduler=cosine", "scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs=-1: must be >= 0"),
    (["scheduler=plateau", "scheduler.patience=nan"], "scheduler.patience=nan: must be an integer"),
    (["scheduler=onecycle", "scheduler.div_factor=inf"], "scheduler.div_factor=inf: must be a finite number"),
    (["scheduler=onecycle", "scheduler.final_div_factor=0"], "scheduler.final_div_factor=0: must be > 0"),
    (["scheduler=plateau", "scheduler.min_lr=-1"], "scheduler.min_lr=-1: must be >= 0"),
    (["scheduler=plateau", "scheduler.mode=max"], "scheduler.mode=max: allowed: 'min'"),
    # data
    (["data.name=nope"], "data.name=nope: allowed: csv, demo"),
    (["data.protocol=loso"], "data.protocol=loso: allowed: 'holdout' or 'cv'"),
    (["data.val_fraction=nan"], "data.val_fraction=nan: must be a finite number"),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], "data.val_fraction + data.test_fraction = 1.1: must be"),
    (["data.min_duration=inf"], "data.min_duration=inf: must be a finite number"),
    (["data.min_duration=5"], "data.min_duration=5.0: must be <= data.max_duration=4.0"),
    (["data.seed=-1"], "data.seed=-1: must be >= 0"),
    (["data.classes=[pluck,nope]"], "data.classes=['pluck', 'nope']: unknown demo classes ['nope']"),
    (["data.classes=[1,2]"], "data.classes[0]=1: must be a string"),
    (["data.fold=true"], "data.fold=true: must be null or a fold of the dataset"),
    (["data.fold=1", "data.protocol=cv"], "data.fold=1 with data.protocol=cv: cv runs every fold"),
    (["data.val_groups=0"], "data.val_groups=0: must be null, a positive number of groups, or a list of distinct"),
    (["data.val_groups=[]"], "data.val_groups=[]: must be null, a positive number of groups, or a list of distinct"),
    (["data.val_groups=[a,a]"], "data.val_groups=['a', 'a']: must be null, a positive number of groups, or a list"),
    (["data.val_groups=1.5"], "data.val_groups=1.5: must be null, a positive number of groups, or a list"),
    (["+data.colour=red"], "data.colour: unknown key; allowed: name, fold, protocol"),
    (["data=folder", "data.root=''"], "data.root=: must be a non-empty string"),
    (["data=folder", *FOLDER, "data.group_regex=''"], "data.group_regex=: must be a non-empty string"),
    (["data=csv", "data.csv=''"], "data.csv=: must be a non-empty string"),
    (["data=esc50", "data.esc10=maybe"], "data.esc10=maybe: allowed: true, false"),
    (["data=demo_mix", "data.max_sources=9"], "data.max_sources=9: at most 6"),
    (["data=demo_mix", "data.gain_range_db=-3"], "data.gain_range_db=-3: must be"),
    (["data=demo_events", "data.max_event_seconds=9"], "data.max_event_seconds=9.0: must be <= data.duration=8.0"),
    (["data=demo_events", "data.min_event_seconds=2", "data.max_event_seconds=1"],
     "data.min_event_seconds=2.0: must be <= data.max_event_seconds=1.0"),
    (["data=desed", *FOLDER, "data.parts=[weak,eval]"], "data.parts=['weak', 'eval']: must be a list of distinct "
                                                        "DESED parts: weak, synthetic_train, synthetic_validation, "
                                                        "validation"),
    (["data=desed", *FOLDER, "data.parts=[]"], "data.parts=[]: must be a list of distinct DESED parts"),
    (["data=desed", "data.root=null"], "data.root=null: data=desed cannot be downloaded; set data.root to your copy"),
    (["data=gtzan", "data.split_scheme=artist"], "data.split_scheme=artist: allowed: 'fault_filtered' or 'random'"),
    (["data=esc50", "data.download.url=ftp://x"], "data.download.url=ftp://x: must be an http(s) URL"),
    (["data=esc50", "data.download.checksum=crc32:ab"], "data.download.checksum=crc32:ab: must be null or "
                                                        "'<algorithm>:<hex digest>'"),
    (["data=esc50", "data.download.timeout_s=inf"], "data.download.timeout_s=inf: must be a finite number"),
    (["data=fsdd", "data.download.max_bytes=1.5"], "data.download.max_bytes=1.5: must be an integer"),
    (["data=esc50", "data.download.max_ratio=nan"], "data.download.max_ratio=nan: must be a finite number"),
    # model (checked by building it)
    (["model.freq_pool=median"], "model.freq_pool=median: allowed: 'flatten', 'max', 'attention' or 'max_centroid'"),
    (["model.event_pool=max"], "model.event_pool=max: allowed: 'linear_softmax' or 'attention'"),
    (["model.event_time_stride=0"], "model.event_time_stride=0: must be > 0"),
    # tracking
    (["tracking.uri=''"], "tracking.uri=: must be a non-empty string"),
    (["tracking.experiment=null"], "tracking.experiment=null: must be a string"),
    (["tracking.run_name=''"], "tracking.run_name=: must be a non-empty string"),
    (["tracking.required=maybe"], "tracking.required=maybe: allowed: true, false"),
    (["tracking.log_model=1"], "tracking.log_model=1: allowed: true, false"),
    (["tracking.registered_model=a/b"], "tracking.registered_model=a/b: must be null or a model name without"),
    (["tracking.export_onnx=yes"], "tracking.export_onnx=yes: allowed: true, false"),
    (["features.verify=sometimes"], "features.verify=sometimes: allowed: true, false"),
    (["lock_timeout_s=-1"], "lock_timeout_s=-1: must be >= 0"),
    (["lock_timeout_s=nan"], "lock_timeout_s=nan: must be a finite number"),
    (["+tracking.colour=red"], "tracking.colour: unknown key; allowed: uri, experiment, run_name, required"),
    # model.norm (conf/norm/)
    (["norm=pcen", "model.norm.type=fancy"], "model.norm.type=fancy: allowed: none, pcen, bin_norm"),
    (["model.norm=3"], "model.norm=3: must be a mapping with type: none, pcen or bin_norm"),
    (["norm=pcen", "+model.norm.colour=red"], "model.norm.colour: unknown key; allowed: "
                                              "type, alpha, delta, r, s, eps, trainable"),
    (["norm=bin_norm", "+model.norm.alpha=0.9"], "model.norm.alpha: unknown key; allowed: type, min_std"),
    (["norm=pcen", "model.norm.alpha=1.5"], "model.norm.alpha=1.5: at most 1"),
    (["norm=pcen", "model.norm.delta=0"], "model.norm.delta=0: must be > 0"),
    (["norm=pcen", "model.norm.r=nan"], "model.norm.r=nan: must be a finite number"),
    (["norm=pcen", "model.norm.s=0"], "model.norm.s=0: must be > 0"),
    (["norm=pcen", "model.norm.eps=-1"], "model.norm.eps=-1: must be > 0"),
    (["norm=pcen", "model.norm.trainable=yes"], "model.norm.trainable=yes: allowed: true, false"),
    (["norm=bin_norm", "model.norm.min_std=inf"], "model.norm.min_std=inf: must be a finite number"),
    (["norm=pcen", "features.top_db=40"], "model.norm.type=pcen: needs features.top_db=null (features.top_db=40)"),
    (["data=fsdd", "norm=bin_norm"], "model.norm.type=bin_norm: needs features.top_db=null"),
    # top level
    (["seed=nan"], "seed=nan: must be an integer"),
    (["seed=-1"], "seed=-1: must be >= 0"),
    (["seed=1.5"], "seed=1.5: must be an integer"),
    (["seed=true"], "seed=true: must be an integer"),
    (["ensemble=['']"], "ensemble[0]=: must be an MLflow run id, a model URI or a model folder"),
    (["paths.models=''"], "paths.models=: must be a non-empty string"),
    (["paths.raw=null"], "paths.raw=null: must be a string"),
    (["paths.prepared=''"], "paths.prepared=: must be a non-empty string"),
    (["paths.features=3"], "paths.features=3: must be a string"),
    (["paths.metrics=' '"], "paths.metrics= : must be a non-empty string"),
]


@functools.lru_cache(maxsize=None)
def _composed(groups: tuple[str, ...]):
    return compose_config(list(groups))


def config_with(overrides: list[str]):
    """`compose_config(overrides)`, composed once per choice of config groups: the other overrides are
    parsed by Hydra's own parser (so `nan`, `inf`, `''`, `+key`, `~key` mean what they mean on the
    command line) and applied to a copy. The real command line: the entrypoint test below."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    groups = tuple(o.input_line for o in parsed if o.key_or_group in config_groups())
    cfg = copy.deepcopy(_composed(groups))
    for override in parsed:
        if override.key_or_group in config_groups():
            continue
        with open_dict(cfg):
            if override.is_delete():
                parent, _, leaf = override.key_or_group.rpartition(".")
                del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
            else:
                OmegaConf.update(cfg, override.key_or_group, override.value(), force_add=True)
    return cfg


def test_applying_overrides_to_a_composed_config_equals_composing_them():
    overrides = ["optimizer=sgd", "optimizer.lr=nan", "seed=abc", "+trainer.x=[1,2]", "~trainer.max_epochs",
                 "tracking.uri=''"]
    assert OmegaConf.to_yaml(config_with(overrides)) == OmegaConf.to_yaml(compose_config(overrides))


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_setting_fails_before_any_work_naming_it(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_config(config_with(overrides))
    text = str(error.value)
    assert text.startswith(message), text
    assert "\n" not in text


def _leaves(node, prefix):
    from omegaconf import DictConfig

    for key, value in node.items():
        if isinstance(value, DictConfig) and f"{prefix}.{key}" != "trainer.callbacks":
            yield from _leaves(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}"


def _keys(schema, prefix: str) -> set[str]:
    return {f"{prefix}{field.alias or name}" for name, field in schema.model_fields.items()}


@pytest.mark.parametrize("group", ["data", "optimizer", "scheduler", "features", "model", "norm"])
def test_every_key_of_every_conf_option_has_a_check(group):
    """Every key conf/ can set is a field of its group's schema."""
    schemas = [(EvaluateSettings, "evaluate."), (TTASettings, "evaluate.tta."), (FeatureSettings, "features."),
               (TrackingSettings, "tracking."), (Download, "data.download."), (TrainerSettings, "trainer."),
               (OptimizerSettings, "optimizer."), (SchedulerSettings, "scheduler."), (PathsSettings, "paths."),
               (RunSettings, ""), *((schema, "model.") for schema in MODEL_SCHEMAS.values()),
               *((schema, "model.norm.") for schema in NORMS.values()),
               *((import_module(f"audiocnn.data.sources.{name}").Settings, "data.") for name in SOURCES)]
    table = set().union(*(_keys(schema, prefix) for schema, prefix in schemas))
    for option in config_groups()[group]:
        cfg = compose_config([f"{group}={option}"])
        keys = [k for name in ("features", "trainer", "optimizer", "data", "tracking", "evaluate", "scheduler",
                               "paths", "model") for k in _leaves(cfg[name], name)] + ["seed", "ensemble"]
        assert [k for k in keys if k not in table] == [], option


@pytest.mark.slow  # a subprocess of the entry point (10-20 s); the same check runs in-process in the fast tier
def test_the_entrypoint_exits_2_with_one_line_and_makes_no_data_folder(tmp_path):
    """`python pipelines/train.py trainer.max_epochs=nan` from the repository: exit 2, one `error:` line,
    none of paths.* (nor an MLflow store) created."""
    paths = [f"paths.{key}={tmp_path / 'data' / key}" for key in ("raw", "prepared", "features", "models", "metrics")]
    hydra_runs = REPO / "data" / "hydra"
    before = sorted(hydra_runs.rglob("*")) if hydra_runs.exists() else []
    result = subprocess.run([sys.executable, "pipelines/train.py", "trainer.max_epochs=nan", *paths,
                             f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: trainer.max_epochs=nan: must be an integer"], result.stderr
    assert list(tmp_path.iterdir()) == []
    assert (sorted(hydra_runs.rglob("*")) if hydra_runs.exists() else []) == before


@pytest.mark.slow  # a subprocess of the entry point (10-20 s); the same check runs in-process in the fast tier
@pytest.mark.parametrize("command", [["pipelines/train.py"], ["-m", "audiocnn.cli", "show-config"]])
def test_an_override_hydra_cannot_parse_is_one_line_saying_how_to_quote_it(tmp_path, command):
    """A regex with brackets, as a shell user first types it: one `error:` line naming the override
    and the quoting that works (it was a Hydra traceback)."""
    result = subprocess.run([sys.executable, *command, "data=folder", f"data.root={tmp_path}",
                             "data.group_regex=^(?P<group>[^_]+)_"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: data.group_regex=^(?P<group>[^_]+)_: not a valid Hydra override; quote a value with special "
        """characters inside the shell quotes: 'data.group_regex="^(?P<group>[^_]+)_"'"""]
    quoted = subprocess.run([sys.executable, "-m", "audiocnn.cli", "show-config", "data=folder", f"data.root={tmp_path}",
                             'data.group_regex="^(?P<group>[^_]+)_"'], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert "group_regex: ^(?P<group>[^_]+)_" in quoted.stdout, quoted.stderr
