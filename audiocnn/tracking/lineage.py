"""What a run was made from, in the places the MLflow UI shows it.

- Source column: MLflow's own `mlflow.source.*` tags: the entry point (`mlflow.source.name`,
  relative to the working directory when inside it), `mlflow.source.type=LOCAL`, and the git
  commit, branch and remote (`repoURL`, without credentials) of the working directory.
- Dataset column: the prepared manifest logged with `log_input` as a pandas dataset named
  `data.name`, whose digest is the manifest's MD5 (the `data.manifest_md5` tag).
- Tags joining the run to its data, model, DVC experiment and Hydra job (overrides redacted).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import mlflow.data

from audiocnn.tracking.names import redact, redact_overrides

DATASET_CONTEXT = "training"
# A Hydra job's overrides, for the train stage it runs in processes of its own (DDP, `experiment`).
HYDRA_OVERRIDES_ENV = "AUDIOCNN_HYDRA_OVERRIDES"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def git_commit() -> str | None:
    return _git("rev-parse", "HEAD")


def source_tags() -> dict[str, str]:
    """MLflow's `mlflow.source.*` tags for this process: entry point, LOCAL, git commit/branch/remote."""
    entry = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    try:
        name = entry.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        name = entry.name
    tags = {"mlflow.source.name": name, "mlflow.source.type": "LOCAL"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
        remote = _git("remote", "get-url", "origin")
        if remote:
            tags["mlflow.source.git.repoURL"] = redact(remote)
    return tags


def manifest_digest(prepared: Path | str) -> str | None:
    """MD5 of `<prepared>/manifest.csv` (`paths.prepared`; None when it is not there)."""
    manifest = Path(prepared) / "manifest.csv"
    if not manifest.exists():
        return None
    with open(manifest, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def hydra_overrides() -> str | None:
    """The current Hydra job's command-line overrides (`model=cnn optimizer.lr=0.001`), if in one
    (or in a process a Hydra job started to train in, `$AUDIOCNN_HYDRA_OVERRIDES`), credentials redacted."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        overrides = os.environ.get(HYDRA_OVERRIDES_ENV)
        return None if overrides is None else redact_overrides(overrides)
    return redact_overrides(HydraConfig.get().overrides.task)


def run_tags(data_name: str, model_name: str, prepared: Path | str) -> dict[str, str]:
    """Tags joining a run to its code, data (`data.name`, the manifest in `paths.prepared`), model
    (`model.name`), DVC experiment and Hydra job."""
    tags = {"data": data_name, "model": model_name, **source_tags()}
    digest = manifest_digest(prepared)
    if digest:
        tags["data.manifest_md5"] = digest
    # Set by `dvc exp run` (workspace and queued) for the stages it runs.
    for variable, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    overrides = hydra_overrides()
    if overrides is not None:
        tags["hydra.overrides"] = overrides
    return tags


def log_dataset(prepared: Path | str, data_name: str, run_id: str) -> None:
    """Log the manifest in `prepared` (`paths.prepared`) as run `run_id`'s input dataset (the Dataset
    column): named `data_name`, digest its MD5, source the manifest file. Nothing when there is no manifest."""
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    digest = manifest_digest(prepared)
    if digest is None:
        return
    manifest = Path(prepared) / "manifest.csv"
    with warnings.catch_warnings():  # MLflow's hints on the source's kind and on integer columns
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(pd.read_csv(manifest), source=str(manifest.resolve()),
                                          name=data_name, digest=digest)
    mlflow.MlflowClient().log_inputs(run_id, datasets=[DatasetInput(
        dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", DATASET_CONTEXT)])])
