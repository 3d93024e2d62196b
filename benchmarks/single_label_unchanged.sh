#!/bin/bash
# Single-label output unchanged by a change: the demo trained for a few epochs at BASE (a commit) and
# at this checkout, each in its own folder, then their metrics compared byte for byte (predictions.csv
# with each folder's root removed from the paths). Same machine, same settings, CPU.
#
#   bash benchmarks/single_label_unchanged.sh 77aa7e8 [epochs=3]
#
# Prints "identical" per file, or the diff, and exits 1 when a file differs.
set -euo pipefail
base=${1:?give the commit to compare with}
epochs=${2:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git -C "$repo" worktree add -q "$work/tree" "$base"
trap 'git -C "$repo" worktree remove --force "$work/tree"' EXIT

run() {  # run <tree> <out>: prepare, featurize, train and evaluate the demo in <out>, with <tree>'s code
    local tree=$1 out=$2
    mkdir -p "$out"
    (cd "$tree" && PYTHONPATH="$tree" "$repo/.venv/bin/python" pipelines/train.py trainer.max_epochs="$epochs" \
        paths.raw="$out/raw" paths.prepared="$out/prepared" paths.features="$out/features" \
        tracking.uri="sqlite:///$out/mlflow.db" hydra.run.dir="$out/run" \
        tracking.log_model=false tracking.export_onnx=false > "$out/log.txt" 2>&1)
}
run "$work/tree" "$work/before" &
run "$repo" "$work/now" &
wait
status=0
for file in test.json per_class.json predictions.csv; do
    if diff <(sed "s|$work/before/||" "$work/before/run/metrics/$file") \
            <(sed "s|$work/now/||" "$work/now/run/metrics/$file"); then
        echo "$file: identical"
    else
        status=1
    fi
done
exit $status
