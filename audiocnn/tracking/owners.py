"""Which process owns a RUNNING MLflow run, and closing the runs whose process is gone.

Every run audiocnn starts or reopens (training runs, evaluate's, the parent runs of repeats
and sweeps) carries its owner as tags: `audiocnn.owner.host` (the host name),
`audiocnn.owner.pidns` (the Linux pid namespace, so that containers sharing a host name are
told apart), `audiocnn.owner.pid` and `audiocnn.owner.start` (when that process started,
in seconds since the epoch). `reap` (called by `tracking.configure`, i.e. whenever a stage
opens the store) marks KILLED every RUNNING run of the experiment owned by *this* host whose
process no longer runs (or whose pid now belongs to a process that started at another
time: the pid was reused), with the reason in `audiocnn.end_reason`.

Runs owned by other hosts (or other pid namespaces) are left alone: from here we cannot
tell whether their process is alive. Runs without owner tags (made by other tools or
older versions) are left alone too. A process's start time comes from psutil (installed
with DVC); one psutil cannot read counts as alive.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import time
from functools import lru_cache
from typing import Iterator

import psutil

HOST_TAG = "audiocnn.owner.host"
PIDNS_TAG = "audiocnn.owner.pidns"
PID_TAG = "audiocnn.owner.pid"
START_TAG = "audiocnn.owner.start"
END_REASON_TAG = "audiocnn.end_reason"
START_TOLERANCE_S = 1.0  # the same process read twice (psutil or /proc) agrees to a clock tick
UNKNOWN = object()  # a process that exists but whose start time cannot be read


def process_start(pid: int):
    """When process `pid` started (seconds since the epoch); None if it does not run (or is a zombie);
    UNKNOWN if it runs but its start cannot be read."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return UNKNOWN


@lru_cache(maxsize=1)
def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def owner_tags() -> dict[str, str]:
    """This process as a run's owner."""
    start = process_start(os.getpid())
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            START_TAG: f"{start:.2f}" if isinstance(start, float) else ""}
    if _pid_namespace():
        tags[PIDNS_TAG] = _pid_namespace()
    return tags


def on_this_machine(tags: dict) -> bool:
    """Owned by this host (and, where both recorded one, this pid namespace)."""
    mine = owner_tags()
    if tags.get(HOST_TAG) != mine[HOST_TAG]:
        return False
    return not (tags.get(PIDNS_TAG) and mine.get(PIDNS_TAG)) or tags[PIDNS_TAG] == mine[PIDNS_TAG]


def owner_alive(tags: dict) -> bool:
    """Whether the process named by a run's owner tags (on this machine) still runs."""
    try:
        pid = int(tags[PID_TAG])
    except (KeyError, ValueError):
        return True  # not ours to judge
    now = process_start(pid)
    if now is None:
        return False
    if now is UNKNOWN or not tags.get(START_TAG):
        return True
    return abs(now - float(tags[START_TAG])) < START_TOLERANCE_S


def describe(tags: dict) -> str:
    start = tags.get(START_TAG)
    when = time.strftime(" started %Y-%m-%d %H:%M:%S", time.localtime(float(start))) if start else ""
    return f"pid {tags.get(PID_TAG)} on {tags.get(HOST_TAG)}{when}"


def reap(client, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `experiment_id` owned by dead processes of this machine;
    returns their ids. Runs of other hosts, and runs without owner tags, are not touched."""
    host = owner_tags()[HOST_TAG].replace("'", "")
    runs = client.search_runs([experiment_id], max_results=10000,
                              filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    reaped = []
    for run in runs:
        tags = run.data.tags
        if not on_this_machine(tags) or owner_alive(tags):
            continue
        reason = (f"its process ({describe(tags)}) ended without closing the run; marked KILLED by pid "
                  f"{os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        client.set_tag(run.info.run_id, END_REASON_TAG, reason)
        with without_run_links():
            client.set_terminated(run.info.run_id, "KILLED")
        print(f"tracking: run {run.info.run_id} ({run.info.run_name}) was left RUNNING by {describe(tags)}, "
              "which is gone; marked KILLED")
        reaped.append(run.info.run_id)
    return reaped


RUN_LINKS = ("\N{RUNNER} View run ", "\N{TEST TUBE} View experiment at: ")


@contextlib.contextmanager
def without_run_links() -> Iterator[None]:
    """Around ending a run: MLflow prints `🏃 View run <name> at: <url>` and `🧪 View experiment at: <url>`
    on stdout when a run on a server ends (`TrackingServiceClient._log_url`); those links lack the UI view
    audiocnn's own links open (`tracking.UI_VIEW`), so these two lines are dropped and anything else
    printed meanwhile is passed on. (MLflow's switch for them, MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT, is
    read from the process environment only.)"""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        sys.stdout.writelines(line for line in printed.getvalue().splitlines(keepends=True)
                              if not line.startswith(RUN_LINKS))
