"""MLflow: where runs go, how a run is opened and named, what it records.

Default store: `sqlite:///mlflow.db` at the repository root (`tracking.uri`); the
orchestration layer puts a `MLFLOW_TRACKING_URI` set when the process starts into
`tracking.uri` (`audiocnn.config`), so below it the URI travels in the config only. A server
that does not answer stops a stage before any work, unless `tracking.required=false` (then the
local store is used, and said so).
A run records the flattened resolved config as params; the git commit, the manifest
checksum, the DVC experiment and the Hydra overrides as tags (`lineage`), the manifest as its
dataset. Credentials never are: URIs lose their user info and secret settings their value
(`names`) in params, tags, run names and messages; run names say briefly what differs (`names`).
The experiment opens in the MLflow UI's model-training view (`EXPERIMENT_KIND`). Runs nest under the
parent run given as `parent_run_id` (a sweep's, a repeat's).
Every run records the process that owns it while it is RUNNING (`owners`); opening the store
(`configure`) marks KILLED the RUNNING runs whose process on this host is gone. A run that fails
records why (`record_failure`). Stages outside Lightning open their run with `open_run`; the train
stage's run is created, resumed and ended by Lightning's MLflow logger (`audiocnn.training.train`),
tagged with the same helpers (`new_run_tags`, `take_over`, `record_failure`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import mlflow
from filelock import FileLock, Timeout

from audiocnn.errors import TrackingUnavailable
from audiocnn.tracking import owners
# Re-exported: callers use tracking.server_problem, .run_tags, .log_dataset, .redact, ...
from audiocnn.tracking.health import CREDENTIALS, HEALTH_TIMEOUT_S, server_problem
from audiocnn.tracking.lineage import (HYDRA_OVERRIDES_ENV, git_commit, hydra_overrides, log_dataset,
                                       run_tags, source_tags)
from audiocnn.tracking.names import redact, redact_setting, run_name

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_TAG_LENGTH = 5000  # and on a tag value
FAILURE_TAG = "audiocnn.failure"  # why a FAILED run failed: the error's type and first line
LOCAL_STORE = "sqlite:///mlflow.db"
# The experiment tag that says it is model training (MLflow's own kinds), and the query that opens the
# MLflow 3.17 UI in its model-training view: that UI takes the view from the URL (else the last one
# chosen, GenAI at first), not from the tag. MLflow's own "View run at" links, which lack it, are not printed.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_VIEW = "workflowType=machine_learning"
# Processes that open a new SQLite store at once (a sweep's parallel jobs, benchmark workers)
# would each create its tables ("duplicate column name: step"); they take turns, this long at most.
STORE_LOCK_TIMEOUT_S = 300


def project_root() -> Path:
    """The folder relative store paths are taken from: `$DVC_ROOT` when DVC runs the stage (for a
    queued experiment, that is the project, not the temporary copy it runs in, whose store
    would be deleted with it), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def anchored(uri: str) -> str:
    """`sqlite:///relative.db` -> `sqlite:////<project root>/relative.db`; other URIs unchanged."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / uri.removeprefix('sqlite:///')}"
    return uri


def ensure_available(uri: str, required: bool = True) -> str:
    """The tracking URI to use for `tracking.uri` = `uri`, checked before any work.

    A URI with user info (`http://user:password@host`) is given to MLflow as it is: its REST client
    sends the user info as basic auth (through `requests`). Nothing audiocnn prints or records holds
    it (`names.redact`), MLflow's own run links are dropped (`owners.without_run_links`), and an
    unexpected error's traceback is printed redacted (`audiocnn.config.stage_main`).
    An unreachable server raises `TrackingUnavailable` (one line: URI, reason, what to do),
    or with `required=False` (`tracking.required=false`) returns the local store `sqlite:///mlflow.db`
    (`audiocnn.experiment.resolve_tracking` records it for the job's later steps).
    """
    uri = anchored(uri)
    problem = server_problem(uri)
    if problem is None:
        return uri
    fallback = anchored(LOCAL_STORE)
    if required and problem.startswith(CREDENTIALS):
        raise TrackingUnavailable(redact(f"tracking.uri={uri}: MLflow tracking server: {problem}; fix them, or "
                                         f"set tracking.required=false to log to {fallback}"))
    if required:
        raise TrackingUnavailable(redact(
            f"tracking.uri={uri}: MLflow tracking server not reachable ({problem}); start it, fix "
            f"MLFLOW_TRACKING_URI / tracking.uri, or set tracking.required=false to log to {fallback}"))
    print(redact(f"tracking: {uri} is not reachable ({problem}); tracking.required=false: logging to the "
                 f"local store {fallback} instead"))
    return fallback


@dataclass(frozen=True)
class Store:
    """Where runs go: the MLflow tracking URI to use (`ensure_available`'s answer) and the experiment."""
    uri: str
    experiment: str


def store_of(group: Mapping) -> Store:
    """The store of the `tracking` config group (`uri`, `experiment`, `required`), checked now
    (`ensure_available`: an unreachable server stops the caller before any work)."""
    return Store(ensure_available(group["uri"], bool(group.get("required", True))), group["experiment"])


def flatten_config(config: Mapping) -> dict[str, str]:
    """{"model.blocks": "[...]", "optimizer.lr": "0.001", ...} of a resolved config as plain Python
    (`OmegaConf.to_container`): dotted keys, lists kept whole; no credentials (`names.redact_setting`:
    `tracking.uri=http://***@host`, `x.password=***`)."""
    flat: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = redact_setting(prefix[:-1], str(node))[:MAX_PARAM_LENGTH]

    walk(dict(config), "")
    return flat


def default_run_name(given: str | None, model: str, data: str, suffix: str = "", kind: str = "") -> str:
    """`given` (`tracking.run_name`), else `<model>-<data>[-<what the overrides `suffix` change>][-<kind>]`
    (`names.run_name`: short, no paths, URIs or credentials), so runs are told apart in the MLflow UI."""
    if given:
        return redact(f"{given}-{kind}" if kind else given)
    return run_name(model, data, suffix, kind)


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment (or one of its runs) on an http(s) server, in its
    model-training view, without credentials; None for other stores."""
    if not uri.startswith(("http://", "https://")):
        return None
    page = f"{redact(uri).rstrip('/')}/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?{UI_VIEW}"


def _use_experiment(name: str, uri: str) -> None:
    """Select experiment `name`, creating it if needed. In a local SQLite store its artifacts go
    next to the database file (`<db folder>/mlruns`), not under whatever the working directory is.
    An experiment without `mlflow.experimentKind` gets `EXPERIMENT_KIND` (the model-training view)."""
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlruns"
        try:
            mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a parallel job
    experiment = mlflow.set_experiment(name)
    if EXPERIMENT_KIND[0] not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, whose first query creates (or upgrades) its tables: one process at a time."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{database}.lock")
    try:
        lock.acquire(timeout=STORE_LOCK_TIMEOUT_S)
    except Timeout:
        raise TrackingUnavailable(f"tracking.uri={redact(uri)}: another process has been opening {database} "
                                  f"for {STORE_LOCK_TIMEOUT_S} s (it holds {database.name}.lock); stop it") from None
    try:
        yield
    finally:
        lock.release()


def configure(store: Store) -> str:
    """Point MLflow at `store` and its experiment and return the store's URI; runs of this experiment
    that a dead process of this host left RUNNING are marked KILLED (`owners.reap`).
    `mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI for the processes this one starts (MLflow's
    doing); audiocnn reads that variable only where a process starts (`audiocnn.config`)."""
    uri = store.uri
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        _use_experiment(store.experiment, uri)
    try:
        owners.reap(mlflow.MlflowClient(), mlflow.get_experiment_by_name(store.experiment).experiment_id)
    except mlflow.exceptions.MlflowException as error:  # never a reason to stop a stage
        print(redact(f"tracking: could not look for runs left RUNNING by dead processes "
                     f"({str(error).splitlines()[0]})"))
    return uri


def new_run_tags(tags: dict | None = None, parent_run_id: str | None = None) -> dict:
    """The tags a run is created with: `tags`, this process as its owner (`owners`), and its parent run."""
    return {**(tags or {}), **owners.owner_tags(), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}


def take_over(client, run_id: str, tags: dict | None = None, parent_run_id: str | None = None) -> None:
    """Run `run_id` resumed by this process: RUNNING again, owned by it (`claim`), with `tags`, and moved
    under `parent_run_id` when that is another run than its parent (a repeat's after its parent was replaced)."""
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    claim(client, run_id)
    if parent_run_id and parent_run_id not in (run.data.tags.get("mlflow.parentRunId"), run_id):
        client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
    if tags:
        client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])


def record_failure(client, run_id: str, error: BaseException) -> None:
    """Why run `run_id` is ending in failure: the error's type and first line as its `audiocnn.failure` tag
    (`NonFiniteError: ...`), the whole reason as its `audiocnn.end_reason`; no credentials (`redact`)."""
    reason = redact(f"{type(error).__name__}: {error}".strip().rstrip(":"))
    first = redact(str(error)).strip().splitlines()
    client.set_tag(run_id, FAILURE_TAG, f"{type(error).__name__}: {first[0] if first else ''}"[:MAX_TAG_LENGTH])
    client.set_tag(run_id, owners.END_REASON_TAG, reason[:MAX_PARAM_LENGTH])


def claim(client, run_id: str) -> None:
    """Make this process the owner of `run_id` (a run reopened after its process died loses its end reason)."""
    client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in owners.owner_tags().items()])
    if owners.END_REASON_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, owners.END_REASON_TAG)


def reopen_run(store: Store, run_id: str) -> bool:
    """Set `run_id` RUNNING again, owned by this process, without making it active (a parent run
    resumed); False when the store has no such run."""
    configure(store)
    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    client.update_run(run_id, status="RUNNING")
    claim(client, run_id)
    return True


@contextmanager
def open_run(store: Store, *, run_id: str | None = None, run_name: str | None = None,
             tags: dict | None = None, parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with `run_id`, resume: RUNNING again) a run owned by this process (`owners`); a run
    that raises is marked FAILED (KILLED for Ctrl-C), with why (`record_failure`). For the stages
    outside Lightning (evaluate, logging the servable model, parent runs' aggregates); the train stage's
    run is Lightning's logger's (`training.run.RunLogger`), with the same tags (`new_run_tags`,
    `take_over`, `record_failure`).

    The run is the child of `parent_run_id` (a run resumed under another parent, a repeat's after its
    parent was replaced, moves there).
    """
    configure(store)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                           tags=None if run_id else new_run_tags(tags, parent_run_id))  # owned from its creation
    status = "FAILED"  # until the body returns
    try:
        if run_id:
            take_over(mlflow.MlflowClient(), run_id, tags, parent_run_id)
        try:
            yield run
        except BaseException as error:
            record_failure(mlflow.MlflowClient(), run.info.run_id, error)
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            raise
        status = "FINISHED"
    finally:
        with owners.without_run_links():
            mlflow.end_run(status=status)


def start_parent_run(store: Store, run_name: str, tags: dict | None = None, parent_run_id: str | None = None,
                     params: dict[str, str] | None = None) -> str:
    """Create a RUNNING run to group child runs (folds, seeds, sweep jobs) without making it active,
    with `params` (`flatten_config`); itself the child of `parent_run_id` when given (a sweep of
    cross-validations)."""
    configure(store)
    experiment = mlflow.get_experiment_by_name(store.experiment)
    tags = {**new_run_tags(tags, parent_run_id), "mlflow.runName": run_name}
    run = mlflow.MlflowClient().create_run(experiment.experiment_id, run_name=run_name, tags=tags)
    mlflow.MlflowClient().log_batch(run.info.run_id, params=[
        mlflow.entities.Param(k, v) for k, v in (params or {}).items()])
    return run.info.run_id


def end_parent_run(store: Store, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """End a run `start_parent_run` made (`reason`: why it did not finish, kept as `audiocnn.end_reason`)."""
    configure(store)
    if reason:
        mlflow.MlflowClient().set_tag(run_id, owners.END_REASON_TAG, redact(reason)[:MAX_PARAM_LENGTH])
    with owners.without_run_links():
        mlflow.MlflowClient().set_terminated(run_id, status=status)


def set_parent(store: Store, run_id: str, parent_run_id: str) -> None:
    """Make `run_id` a child of `parent_run_id` (a run made where the parent was not known)."""
    mlflow.MlflowClient(tracking_uri=configure(store)).set_tag(run_id, "mlflow.parentRunId", parent_run_id)
