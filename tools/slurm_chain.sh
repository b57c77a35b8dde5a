#!/usr/bin/env bash
# A long chain (or any training) on SLURM that outlives its time limit:
#
#   sbatch [--partition=P --nodes=N --time=...] tools/slurm_chain.sh CONFIG WORK_DIR [train.py args]
#
# Every job step runs tools/train.py CONFIG --resume on all tasks (one per
# GPU; --launcher slurm). SLURM sends this script SIGUSR1 180 s before the
# time limit (--signal=B:...), which passes it to the tasks through srun;
# the run then stops at the next iteration boundary, saves a checkpoint
# there (PreemptionHook; a chain between generations too) and exits with
# code 75. This script then requeues the job, which resumes where the run
# stopped: no trained iteration is lost. (After the signal it requeues also
# when srun reports another failure, such as a task killed by
# --kill-on-bad-exit while the ranks exited one by one: the checkpoint was
# written before any rank exits.) A preemption by the scheduler requeues
# the job too (--requeue). Any other exit code ends the job with that code.
# Override the #SBATCH defaults on the sbatch command line; the GPUs per
# node, tasks per node and CPUs below go together (one task per GPU).
# MASTER_PORT is derived from the job id so that two jobs sharing a node do
# not collide; PYTHON and SRUN_ARGS come from the environment.
#SBATCH --job-name=tsd-chain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=5
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
if [ -z "$1" ] || [ -z "$2" ]; then
    echo "usage: sbatch $0 CONFIG WORK_DIR [train.py arguments]" >&2
    exit 2
fi
CONFIG=$1
WORK_DIR=$2
PYTHON=${PYTHON:-python}
REQUEUE_EXIT_CODE=75
# sbatch runs a copy of this script: find the repository from where it was
# submitted (the folder of tools/).
REPO=${MMTOLERANT_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}
export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}

echo "[slurm_chain] job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}): $CONFIG in $WORK_DIR"
SIGNALLED=
PYTHONPATH="$REPO":$PYTHONPATH \
srun --kill-on-bad-exit=1 ${SRUN_ARGS} \
    "$PYTHON" -u "$REPO/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
    --launcher=slurm --resume "${@:3}" &
SRUN_PID=$!
trap 'SIGNALLED=1; kill -USR1 "$SRUN_PID" 2>/dev/null' USR1
# `wait` returns early when the trap runs: wait until srun is gone, then
# read its exit status.
while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID"; done
wait "$SRUN_PID"
rc=$?
if [ "$rc" -eq "$REQUEUE_EXIT_CODE" ] || { [ -n "$SIGNALLED" ] && [ "$rc" -ne 0 ]; }; then
    echo "[slurm_chain] stopped for the time limit at a checkpoint; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}"
    exit 0
fi
exit "$rc"
