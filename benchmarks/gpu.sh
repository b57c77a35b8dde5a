#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one go (sized for under 8
# minutes on one H100/H200; not run yet, no GPU was lent so far): CIFAR
# ResNet-18 at batch 128 and ResNet-50 at 224x224, AMP on, each in both
# modes (interleaved: time; separate processes: peak GPU memory). Results
# as JSON and logs in OUT_DIR.
#   bash benchmarks/gpu.sh OUT_DIR
set -eo pipefail
OUT_DIR=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
VARIANTS="plain distill distill_nchw distill_bf16 cached teacher teacher_nchw handkd"
"$PYTHON" -c 'import torchdistill' 2>/dev/null && VARIANTS="$VARIANTS torchdistill"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
    | tee "$OUT_DIR/gpu.txt"
run() {
    name=$1; shift
    echo "== $name: benchmarks/distill_step.py $*"
    # A failed run (out of memory, say) is logged; the others still run.
    "$PYTHON" benchmarks/distill_step.py --device cuda --amp "$@" \
        --out "$OUT_DIR/$name.json" 2>&1 | grep -v ' - mmengine - ' \
        | tee "$OUT_DIR/$name.log" || echo "== $name FAILED"
}
for model in resnet18_cifar resnet50_in1k; do
    run "${model}_interleaved" --model "$model" --batch 128 --threads 4 \
        --interleave --steps 20 --rounds 2 --warmup 5 --variants $VARIANTS
    # One process per variant: its peak GPU memory (time: the run above).
    run "${model}_separate" --model "$model" --batch 128 --threads 4 \
        --steps 20 --rounds 1 --warmup 5 --variants $VARIANTS
done
