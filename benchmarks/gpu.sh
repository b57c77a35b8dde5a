#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one go (sized for under 8
# minutes on one H100/H200; not run yet, no GPU was lent so far): CIFAR
# ResNet-18 at batch 128 and ResNet-50 at 224x224, AMP on, each in both
# modes (interleaved: time; separate processes: peak GPU memory); then a
# real chain through tools/dist_train.sh on every GPU of the machine (NCCL:
# the GPU path of the runner, the frozen teacher and the shared teacher
# cache; on a single GPU, one process). Results as JSON and logs in
# OUT_DIR.
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

# A chain M0 -> M1 of the digits quick start (no download), 3 epochs each,
# the student with the float16 teacher cache of 2 views per image (filled
# in epochs 1-2, replayed in epoch 3: every sample is drawn in every epoch,
# so drop_last is off), on every GPU. A check of the GPU path, not a
# recipe: 3 epochs give a poor top-1.
NGPU=$(nvidia-smi -L | wc -l)
echo "== chain: tools/dist_train.sh on $NGPU GPU(s)"
start=$(date +%s)
PORT=${PORT:-29517} PYTHON="$PYTHON" bash tools/dist_train.sh \
    configs/tsd/tsd_resnet18-w8_1xb64_digits.py "$NGPU" \
    --work-dir "$OUT_DIR/chain" --cfg-options \
    generations.num_generations=1 train_cfg.max_epochs=3 \
    generations.teacher_cache.dtype=float16 generations.teacher_cache.views=2 \
    train_dataloader.drop_last=False \
    > "$OUT_DIR/chain.log" 2>&1 || echo "== chain FAILED (see chain.log)"
echo "chain wall time: $(( $(date +%s) - start )) s on $NGPU GPU(s)" \
    | tee "$OUT_DIR/chain.txt"
grep -E 'Distributed training|GPU number|teacher cache|\[chain\] generation' \
    "$OUT_DIR/chain.log" | tail -n 12 | tee -a "$OUT_DIR/chain.txt" || true
[ -f "$OUT_DIR/chain/generations.md" ] \
    && tee -a "$OUT_DIR/chain.txt" < "$OUT_DIR/chain/generations.md" || true
