#!/usr/bin/env bash
# Distributed training: tools/dist_train.sh CONFIG NUM_PROCESSES [train.py args]
# One process per GPU; on a machine without CUDA the processes train on the
# CPU over gloo. NNODES, NODE_RANK, MASTER_ADDR, PORT, PYTHON: as in mmpretrain.
if [ -z "$1" ] || [ -z "$2" ]; then
    echo "usage: $0 CONFIG NUM_PROCESSES [train.py arguments]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/dist_run.sh" train.py "$2" "$1" "${@:3}"
