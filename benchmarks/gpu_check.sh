#!/usr/bin/env bash
# The CUDA paths on a GPU machine, in one run: the CUDA tests, featurize on the GPU against
# librosa on the machine's cores, one bf16 training on FSDD, and predict with PyTorch eager
# on the GPU beside the CPU backends. The train step passes overrides, so it runs as an
# experiment (its outputs under data/hydra/runs/, then the test split's evaluation).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [STEP ...]   # steps: tests featurize train predict (default: all)
#
# Needs: this checkout (importable, e.g. `pip install -e . --no-deps`), a CUDA GPU, and FSDD's
# recordings under $FSDD_ROOT/recordings (default ../shared/data/fsdd). Writes into OUT_DIR:
# tests.log, featurize.json, train.log, predict.json and gpu_check.log (everything printed).
# Each step has its own time limit; a step that fails is reported and the next one runs.
set -u
out=$(realpath "${1:?usage: gpu_check.sh OUT_DIR}")
mkdir -p "$out"
shift
steps=" ${*:-tests featurize train predict} "
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
fsdd=${FSDD_ROOT:-$(realpath ../shared/data/fsdd)}
work=$(mktemp -d)
python=${PYTHON:-python3}

step() {  # step KEY NAME SECONDS COMMAND...: run with a limit, print how long it took and how it ended
    local key=$1 name=$2 limit=$3 started=$SECONDS
    shift 3
    [[ $steps == *" $key "* ]] || return 0
    echo "== $name"
    timeout "$limit" "$@"
    echo "== $name: rc=$? in $((SECONDS - started)) s"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'cpus', __import__('os').cpu_count())"
    step tests "CUDA tests" 120 $python -m pytest -q -p no:cacheprovider tests/test_cuda.py -o addopts="" 2>&1 | tee "$out/tests.log"
    step featurize "featurize benchmark, features.device=cuda" 150 \
        $python benchmarks/featurize.py --clips 1000 features.device=cuda
    [[ $steps != *" featurize "* ]] || cp benchmarks/results/featurize.json "$out/featurize.json"
    step train "train: prepare, featurize (cuda), train (gpu, bf16-mixed)" 300 bash -c "
        set -e
        common=\"data=fsdd data.root=$fsdd paths.raw=$work/raw paths.prepared=$work/prepared \
                paths.features=$work/features paths.models=$work/models paths.metrics=$work/metrics tracking.uri=sqlite:///$work/mlflow.db\"
        $python pipelines/prepare.py \$common
        $python pipelines/featurize.py \$common features.device=cuda
        $python pipelines/train.py \$common trainer.accelerator=gpu trainer.precision=bf16-mixed \
            trainer.max_epochs=8 trainer.num_workers=4" 2>&1 | tee "$out/train.log" | grep -v "it/s\]$"
    step predict "predict benchmark, with PyTorch eager on CUDA" 240 \
        $python benchmarks/predict.py --cuda --results "$out/predict.json"
} 2>&1 | tee "$out/gpu_check.log"
