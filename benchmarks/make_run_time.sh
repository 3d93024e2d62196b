#!/bin/bash
# `make run`'s two commands (`dvc repro`, `audiocnn results`) timed in fresh clones of this
# checkout's HEAD, one per setting, all at once (so that they share the machine alike and their
# times compare): each clone's params.yaml is the defaults plus that setting's overrides.
#
#   bash benchmarks/make_run_time.sh "old:augment=none scheduler=none" "new:" "new30:trainer.max_epochs=30"
#
# Each argument is `<name>:<overrides>`. Prints per name the wall time and test.json's accuracy and
# ECE; the clones stay under $WORK (default: a new temporary folder) for a look at their outputs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$(mktemp -d)}
for spec in "$@"; do
    name=${spec%%:*}
    overrides=${spec#*:}
    (
        clone="$work/$name"
        git clone -q "$repo" "$clone"
        cd "$clone"
        export PYTHONPATH="$clone" PATH="$repo/.venv/bin:$PATH"
        # shellcheck disable=SC2086  # the overrides are separate words
        audiocnn params $overrides > /dev/null
        start=$(date +%s)
        dvc repro > "$work/$name.log" 2>&1
        audiocnn results >> "$work/$name.log" 2>&1
        seconds=$(( $(date +%s) - start ))
        python - "$name" "$seconds" <<'EOF'
import json, sys
m, run = json.load(open("metrics/test.json")), json.load(open("data/models/run.json"))
print(f"{sys.argv[1]}: make run {int(sys.argv[2]) // 60} min {int(sys.argv[2]) % 60} s, {run['epochs']} epochs, test accuracy "
      f"{m['accuracy']:.3f} (95% CI {m['accuracy_ci95']['low']:.3f}-{m['accuracy_ci95']['high']:.3f}), ECE {m['ece']:.3f}")
EOF
    ) &
done
wait
echo "clones and logs in $work"
