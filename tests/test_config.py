"""Config: params.yaml is the composition of conf/, and bad settings fail before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from audiocnn.config import ConfigError, compose_config, config_groups, validate_config
from tests.conftest import REPO


def test_params_yaml_equals_composition_of_conf():
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert committed == OmegaConf.to_container(compose_config(), resolve=True)


def test_required_groups_exist():
    groups = config_groups()
    for group in ("data", "features", "model", "optimizer", "trainer", "tracking"):
        assert groups.get(group), group
    assert {"cnn", "crnn_gru", "crnn_lstm"} <= set(groups["model"])


@pytest.mark.parametrize("model", config_groups()["model"])
def test_every_model_config_composes_and_validates(model):
    cfg = compose_config([f"model={model}"])
    validate_config(cfg)
    assert cfg.model.name == model


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["features.n_bins=200"], "features.n_bins=200: top bin"),
        (["features.hop_length=0"], "features.hop_length=0"),
        (["optimizer.lr=-1"], "optimizer.lr=-1"),
        (["features.top_db=0"], "features.top_db=0: must be > 0"),
        (["model=cnn", "features.window_frames=12"], "model.blocks[3]: time 1 -> 0 with pooling kernel 2"),
        (["model.blocks.0.pool=median"], "model.blocks[0]: pool='median'"),
        (["model.rnn=transformer"], "model.rnn=transformer: allowed: 'gru' or 'lstm'"),
        (["+model.colour=red"], "model.colour: unknown key; allowed: _target_, name, blocks, dropout"),
    ],
)
def test_bad_settings_name_the_setting(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_config(compose_config(overrides))


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(ConfigError, match=r"model=resnet9000: unknown model config; allowed: alexnet, cnn, crnn_gru"):
        compose_config(["model=resnet9000"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=nope"], "error: model=nope: unknown model config; allowed: alexnet, cnn, crnn_gru, crnn_lstm, lenet, resnet, vgg"),
        (["-m", "model=cnn,nope"], "error: model=nope: unknown model config"),
        (["features.n_bins=120"], "error: features.n_bins=120: top bin 31605 Hz is above Nyquist 8000 Hz"),
        (["model=cnn", "features.window_frames=12"], "error: model.blocks[3]: time 1 -> 0"),
    ],
)
@pytest.mark.slow  # a subprocess of the entry point (10-20 s); the same check runs in-process in the fast tier
def test_entrypoint_fails_in_one_line_before_any_work(tmp_path, args, expected):
    """Run the real entrypoint in an empty folder: exit 2, one line on stderr, nothing written."""
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a subprocess of the entry point (10-20 s); the same check runs in-process in the fast tier
def test_dvc_params_file_is_validated_too(tmp_path):
    bad = OmegaConf.to_container(compose_config(["features.n_bins=200"]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare.py"), "--params", "params.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: features.n_bins=200")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_cli_writes_params_and_rejects_bad_settings(tmp_path):
    from audiocnn.cli import main

    assert main(["params", "model=cnn", "--output", str(tmp_path / "p.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["model"]["name"] == "cnn"
    assert main(["show-config", "features.n_bins=500"]) == 2


def _stage_exit(tmp_path, monkeypatch, error: Exception) -> int:
    """Run a stage that raises `error` through `stage_main --params`: its exit status."""
    from audiocnn.config import stage_main, write_params

    monkeypatch.setattr("sys.argv", ["stage.py", "--params", str(write_params(tmp_path / "params.yaml"))])

    def stage(cfg, settings):
        raise error

    with pytest.raises(SystemExit) as exit_info:
        stage_main(stage)
    return exit_info.value.code


def test_bad_data_found_while_working_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    """EmptySplitError, LeakageError, DownloadError reach the user as `error: ...`, not a traceback."""
    from audiocnn.data.prepare import EmptySplitError

    error = EmptySplitError("split 'val' is empty after skipping 3 unusable files")
    assert _stage_exit(tmp_path, monkeypatch, error) == 1
    assert capsys.readouterr().err == "error: split 'val' is empty after skipping 3 unusable files\n"


def test_an_unexpected_error_exits_1_with_its_traceback_and_no_credential(tmp_path, monkeypatch, capsys):
    """MLflow's REST errors name the tracking URI as given, user info included: the traceback is printed redacted."""
    error = RuntimeError("API request to http://admin:s3cret@127.0.0.1:5000/api/2.0/mlflow/runs/get failed")
    assert _stage_exit(tmp_path, monkeypatch, error) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "in stage" in err and "s3cret" not in err
    assert err.splitlines()[-1] == ("error: RuntimeError: API request to http://***@127.0.0.1:5000/api/2.0/mlflow/runs/"
                                    "get failed")


def test_a_sweep_validates_each_job_once_before_any_job_runs(tmp_path, monkeypatch):
    """`-m model=cnn,crnn_gru`: both jobs are validated up front (a bad one would stop the sweep
    before any work) and not a second time when they run."""
    import audiocnn.config as config

    calls, ran = [], []
    real = config.validate_config
    monkeypatch.setattr(config, "validate_config", lambda cfg: (calls.append(cfg.model.name), real(cfg))[1])
    monkeypatch.setattr("sys.argv", [
        "train.py", "-m", "model=cnn,crnn_gru", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"])
    config.stage_main(lambda cfg: None, hydra_task=lambda cfg: ran.append(cfg.model.name) or 0.0)
    assert ran == ["cnn", "crnn_gru"]
    assert sorted(calls) == ["cnn", "crnn_gru"], f"validated {calls}"


def test_a_crashed_sweep_job_lets_the_others_run_and_prints_no_credential(tmp_path, monkeypatch, capsys):
    """An unexpected error in one job of `-m` is reported redacted; Hydra still runs the other jobs."""
    import audiocnn.config as config

    ran = []

    def task(cfg):
        ran.append(cfg.model.name)
        if cfg.model.name == "cnn":
            raise RuntimeError("API request to http://admin:s3cret@127.0.0.1:5000/api/2.0/mlflow/runs/get failed")
        return 0.0

    monkeypatch.setattr("sys.argv", [
        "train.py", "-m", "model=cnn,crnn_gru", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"])
    with pytest.raises(SystemExit) as exit_info:
        config.stage_main(lambda cfg: None, hydra_task=task)
    assert exit_info.value.code == 1 and ran == ["cnn", "crnn_gru"]
    captured = capsys.readouterr()
    assert "s3cret" not in captured.err + captured.out
    assert "StageFailed: RuntimeError: API request to http://***@127.0.0.1:5000" in captured.err


def test_a_params_stage_reads_its_settings_once(tmp_path, monkeypatch):
    """`pipelines/*.py --params FILE` (DVC): validation reads the config into `Settings`; the stage takes them
    (`experiment.job_of(settings=...)`) instead of reading them again."""
    import sys

    import audiocnn.settings as settings_module
    from audiocnn.config import stage_main, write_params
    from audiocnn.experiment import job_of

    params = write_params(tmp_path / "params.yaml", [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the user's would replace tracking.uri
    reads, read = [], settings_module.read_settings
    monkeypatch.setattr(settings_module, "read_settings", lambda cfg: reads.append(1) or read(cfg))
    monkeypatch.setattr("audiocnn.experiment.read_settings", settings_module.read_settings)
    monkeypatch.setattr(sys, "argv", ["train.py", "--params", str(params)])
    jobs = []
    stage_main(lambda cfg, settings: jobs.append(job_of(cfg, settings=settings)))
    assert len(jobs) == 1 and len(reads) == 1
    assert jobs[0].settings.tracking.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    # DVC's train and evaluate stages themselves (the training and scoring replaced by what records their job)
    from audiocnn.experiment import evaluate_stage, train_stage

    monkeypatch.setattr("audiocnn.experiment.train_model", lambda job: jobs.append(job))
    monkeypatch.setattr("audiocnn.experiment.evaluate_model", lambda job: jobs.append(job))
    for stage in (train_stage, evaluate_stage):
        reads.clear()
        stage_main(stage)
        assert len(reads) == 1, stage.__name__
    assert len(jobs) == 3 and all(job.settings.run.seed == jobs[0].settings.run.seed for job in jobs)
