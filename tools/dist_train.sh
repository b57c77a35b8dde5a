#!/usr/bin/env bash
# Distributed training: tools/dist_train.sh CONFIG NUM_PROCESSES [train.py args]
# One process per GPU; on a machine without CUDA the processes train on the
# CPU over gloo (mmtolerant switches the backend and the DDP device ids).
set -e
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

if [ -z "$CONFIG" ] || [ -z "$GPUS" ]; then
    echo "usage: $0 CONFIG NUM_PROCESSES [train.py arguments]" >&2
    exit 2
fi

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
