"""Whether an MLflow tracking server can be used, asked with the credentials its client would send.

The server must answer `/health`, and then an authenticated call (the first experiment of
`experiments/search`) with 200: a server behind MLflow's basic auth (`mlflow server --app-name
basic-auth`) answers `/health` to anyone, and 401/403 to credentials it refuses. Credentials
are MLflow's own: the user info of the URI (`http://user:password@host`), else
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN (a bearer token);
MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are honoured as the client does.
What is returned never holds the credentials.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

from audiocnn.tracking.names import redact

HEALTH_TIMEOUT_S = 5.0
AUTH_CHECK = "api/2.0/mlflow/experiments/search?max_results=1"
CREDENTIALS = "credentials"  # how a problem with them starts ("credentials refused (HTTP 401)")


def _request_settings(uri: str) -> tuple[str, dict]:
    """(the URI without user info, the keyword arguments of `requests.get` that authenticate it)."""
    from mlflow.utils.credentials import get_default_host_creds

    parts = urlsplit(uri)
    creds = get_default_host_creds(uri)
    settings: dict = {"headers": {}}
    if parts.username is not None:
        settings["auth"] = (unquote(parts.username), unquote(parts.password or ""))
    elif creds.username and creds.password:
        settings["auth"] = (creds.username, creds.password)
    elif creds.token:
        settings["headers"]["Authorization"] = f"Bearer {creds.token}"
    if creds.ignore_tls_verification:
        settings["verify"] = False
    elif creds.server_cert_path:
        settings["verify"] = creds.server_cert_path
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return urlunsplit(bare).rstrip("/"), settings


def _reason(error: Exception) -> str:
    """`[Errno 111] Connection refused` out of requests' nested message (else its first line)."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    return redact(found.group(0).strip() if found else f"{type(error).__name__}: {text.splitlines()[0] if text else ''}")


def server_problem(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> str | None:
    """Why the MLflow server at an http(s) `uri` cannot be used (None if it can; other URIs: None)."""
    if not uri.startswith(("http://", "https://")):
        return None
    base, settings = _request_settings(uri)
    try:
        response = requests.get(f"{base}/health", timeout=timeout, **settings)
        if response.status_code != 200:
            return f"/health answered HTTP {response.status_code}"
        response = requests.get(f"{base}/{AUTH_CHECK}", timeout=timeout, **settings)
    except requests.RequestException as error:
        return _reason(error)
    if response.status_code in (401, 403):
        if "auth" in settings or settings["headers"]:
            return f"{CREDENTIALS} refused (HTTP {response.status_code})"
        if response.status_code == 403:  # no credentials sent: MLflow's host check refuses with 403 too
            return ("the server refused the request (HTTP 403): if it needs credentials, give user:password@ in "
                    "the URI or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; if it checks the Host "
                    "header, start it with --allowed-hosts naming this host and port")
        return (f"{CREDENTIALS} required (HTTP {response.status_code}): give user:password@ in the URI "
                "or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    return None
