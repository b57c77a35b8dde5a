#!/usr/bin/env bash
# torchrun for our tools: tools/dist_run.sh TOOL.py NUM_PROCESSES [TOOL.py args]
# (dist_train.sh and dist_test.sh call it). One process per GPU; on a machine
# without CUDA the processes run on the CPU over gloo. NNODES, NODE_RANK,
# MASTER_ADDR, PORT and PYTHON come from the environment.
set -e
TOOL=$1
NPROC=$2
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$(dirname "$0")/$TOOL" \
    "${@:3}" \
    --launcher pytorch
