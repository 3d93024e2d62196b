#!/bin/bash
# The resume and featurize-SIGKILL tests, N times each (default 10), each run logged with its time and the
# load average: run it beside a training or two busy loops (#24's "10 times under load").
#   bash benchmarks/flaky_under_load.sh [N] > flaky.log
cd "$(dirname "$0")/.." || exit 1
runs=${1:-10}
for test in "tests/test_resume.py::test_a_training_killed_mid_run_resumes_to_the_same_model_metrics_and_run" \
            "tests/test_featurize_scale.py::test_a_sigkilled_featurize_restarts_and_gives_the_uninterrupted_store"; do
  for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    if .venv/bin/python -m pytest -q -p no:cacheprovider -m "slow or not slow" "$test" > /dev/null 2>&1; then
      result=pass
    else
      result=FAIL
    fi
    echo "$(date +%T) $test run $i $result $(( $(date +%s) - start ))s load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
