"""Parallel jobs on a new SQLite store: each would create the tables, and all but one crashed
with `duplicate column name: step` (seen with two benchmark workers). They take turns now.

Four real processes start at the same instant on a store that does not exist yet; each
opens a run and logs a metric. All must succeed and all four runs must be in the store.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, tiny_config

JOBS = 4
JOB = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.conftest import tiny_config
from audiocnn import tracking
root, go = Path({root!r}), Path({go!r})
cfg = tiny_config(root)
(root / ("ready-" + sys.argv[1])).touch()
while not go.exists():
    time.sleep(0.005)
with tracking.open_run(tracking.store_of(cfg.tracking), run_name="job-" + sys.argv[1]):
    import mlflow
    mlflow.log_metric("job", int(sys.argv[1]))
"""


@pytest.mark.slow  # 10-20 s: make test-slow and CI run it (#24: make test at most 12 min)
def test_jobs_that_open_a_new_sqlite_store_at_once_all_log_their_run(tmp_path):
    go = tmp_path / "go"
    script = JOB.format(repo=str(REPO), root=str(tmp_path), go=str(go))
    jobs = [subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(JOBS)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < JOBS and time.monotonic() < deadline:
        time.sleep(0.05)  # until every job has imported MLflow and waits for `go`
    go.touch()
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    failed = [out[-2000:] for job, out in zip(jobs, outputs) if job.returncode != 0]
    assert not failed, failed
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tiny_config(tmp_path).tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.metrics["job"] for r in runs) == list(range(JOBS))


def test_a_store_another_process_keeps_locked_is_one_clear_error(tmp_path, monkeypatch):
    from audiocnn import tracking
    from audiocnn.errors import TrackingUnavailable

    hold = (f"import time; from filelock import FileLock; lock = FileLock({str(tmp_path / 'mlflow.db.lock')!r}); "
            "lock.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(tracking, "STORE_LOCK_TIMEOUT_S", 0.5)
        with pytest.raises(TrackingUnavailable, match=r"another process has been opening .*mlflow.db for 0.5 s"):
            tracking.configure(tracking.store_of(tiny_config(tmp_path).tracking))
    finally:
        holder.kill()
        holder.wait()
