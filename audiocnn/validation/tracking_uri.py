"""The `tracking` group (`TrackingSettings`), and the tracking store a stage will open (`tracking.uri`,
replaced by `MLFLOW_TRACKING_URI` when set), checked before any folder or store is made.

MLflow opens a local store where it is told and fails deep inside, after the run's folders
exist: `file:///etc` (a folder store, which MLflow 3 refuses unless `MLFLOW_ALLOW_FILE_STORE=true`,
and which would otherwise fill `/etc` with experiment folders), `sqlite:////etc/passwd` (not a
database), a SQLite file under a file. Each is one `ConfigError` line here. Servers (http/https)
are asked by `tracking.ensure_available`, databases (postgresql, mysql, ...) by MLflow itself.
Only `os` and `pathlib` are used: validating must not import MLflow (seconds per command).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import AfterValidator, BaseModel

from audiocnn.errors import SETTINGS_CONFIG, ConfigError, parse_settings

SQLITE_HEADER = b"SQLite format 3\x00"
FILE_STORE_ENTRIES = (".trash", "models")  # besides one numbered folder per experiment
# MLflow 3.17's own tracking stores (its `_tracking_store_registry`), read without importing MLflow
SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _model_name(value: str) -> str:
    if any(c in value for c in "/:"):
        raise ValueError("must be null or a model name without '/' or ':'")
    return value


Text = Annotated[str, AfterValidator(_text)]


class TrackingSettings(BaseModel):
    """The `tracking` group: conf/tracking/mlflow.yaml says what each key does. (Here, not in
    `audiocnn.tracking`, whose import loads MLflow.)"""
    model_config = SETTINGS_CONFIG

    uri: Text
    experiment: Text
    run_name: Text | None = None
    required: bool = True
    log_model: bool = True
    export_onnx: bool = False
    registered_model: Annotated[Text, AfterValidator(_model_name)] | None = None


def tracking_settings(values) -> TrackingSettings:
    """The `tracking` group (plain values) as `TrackingSettings`; `ConfigError` naming the first bad setting,
    credentials in a URI redacted."""
    try:
        return parse_settings(TrackingSettings, values, "tracking")
    except ConfigError as error:
        from audiocnn.tracking.names import redact  # only now: importing audiocnn.tracking imports MLflow

        raise ConfigError(redact(str(error))) from None


def validate_tracking(settings: TrackingSettings) -> None:
    """`MLFLOW_TRACKING_URI` and `tracking.uri` (which the variable replaces where a process starts,
    `audiocnn.config.with_tracking_uri`): a store MLflow can open or create. A bad variable is named as such."""
    for name, uri in (("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI")),
                      ("tracking.uri", settings.uri)):
        problem = store_problem(uri) if uri else None
        if problem:
            from audiocnn.tracking.names import redact  # only now: importing audiocnn.tracking imports MLflow

            raise ConfigError(redact(f"{name}={uri}: {problem}"))


def store_problem(uri: str) -> str | None:
    """Why MLflow could not use the store at `uri`, in a few words; None when it can (or it is a server
    or database, checked when it is opened). A relative `sqlite:///x.db` is taken from the project
    root, as `tracking` does (`$DVC_ROOT`, else the working directory)."""
    scheme = "databricks" if uri == "databricks" else urlsplit(uri).scheme.split("+")[0]  # MLflow's spelling
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///").partition("?")[0]
        if uri.startswith("sqlite:///") and path not in ("", ":memory:"):
            return _sqlite_problem(Path(os.environ.get("DVC_ROOT") or Path.cwd()) / path)
        return None
    if scheme in ("", "file"):
        return _folder_problem(Path(url2pathname(urlsplit(uri).path) if scheme else uri))
    if scheme not in SCHEMES and scheme not in _plugin_schemes():
        return ("not a tracking store MLflow opens; allowed: sqlite:///<file>, http(s)://<server>, a database "
                "(postgresql://, mysql://, mssql://), databricks")
    return None


def _plugin_schemes() -> set[str]:
    """Schemes of tracking stores that installed MLflow plugins register (their entry points)."""
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}


def _sqlite_problem(path: Path) -> str | None:
    if path.is_dir():
        return f"{path} is a folder, not a SQLite database file (give a file name such as {path / 'mlflow.db'})"
    if path.is_file():
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as error:
            return f"cannot read {path} ({error.strerror or error})"
        if header and header != SQLITE_HEADER[:len(header)]:
            return f"{path} is not a SQLite database (it holds other data); give a new file name"
        if not os.access(path, os.W_OK):
            return f"{path} is read-only; MLflow writes every run into it"
        return None
    return _creatable(path, "the database")


def _folder_problem(folder: Path) -> str | None:
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
        return ("a folder store, which MLflow 3 no longer opens (its file store is in maintenance mode); "
                "use a SQLite file (sqlite:///mlflow.db) or an http(s):// server")
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if folder.is_dir():
        try:
            others = sorted(e.name for e in os.scandir(folder)
                            if not (e.name in FILE_STORE_ENTRIES or (e.name.isdigit() and e.is_dir())))
        except OSError as error:
            return f"cannot list {folder} ({error.strerror or error})"
        if others:
            return (f"{folder} holds files that are not an MLflow store's ({', '.join(others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}); give a new or empty folder")
        return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"
    return _creatable(folder, "the store")


def _creatable(path: Path, what: str) -> str | None:
    """Why `path` (which does not exist) cannot be created: its nearest existing parent is a file or read-only."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so {what} {path} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable, so {what} {path} cannot be created"
    return None
