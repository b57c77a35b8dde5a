"""Launching the chains of a sweep (``tools/analysis/sweep.py``) on this
machine, and what every launcher shares.

What one chain runs (:func:`chain_command`): ``tools/train.py``
(``tools/dist_train.sh`` on several GPUs) with ``--resume`` once its
work_dir exists, its output appended to its log; how its end reads
(:func:`outcome`). On this machine a pool of processes (:func:`run_pool`)
runs the chains, each running at once in its own slot of GPUs and
torchrun port (:func:`local_slots`), which submitit's local executor uses
too. Chains as submitit jobs (a SLURM job array, or the local executor)
are :mod:`mmtolerant.utils.submitit_jobs`; planning the runs and
tabulating their reports stay in the tool. The ``tools`` folder is the
caller's (a checkout's: an installed package has none).
"""
import os
import os.path as osp
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import List, NamedTuple

from mmtolerant.utils.preemption import REQUEUE_EXIT_CODE
from mmtolerant.utils.progress import Progress

LAUNCHERS = ('pool', 'slurm', 'submitit-local')
# torchrun's port of the first chain running on this machine; the next
# ones take the following ports.
DEFAULT_PORT = 29500


class ChainRun(NamedTuple):
    """One chain to run: its name, config, ``--cfg-options``, work_dir and
    the log its output is appended to."""
    name: str
    config: str
    options: List[str]
    work_dir: str
    log: str


def chain_command(tools, config, options, work_dir, gpus=0, resume=False,
                  devices=None, port=None, threads=None):
    """The command of one chain and the variables it adds to the
    environment: ``tools/train.py`` (``tools/dist_train.sh`` on ``gpus``
    GPUs) of the ``tools`` folder, with ``--resume`` when its work_dir
    exists. ``devices`` (GPU ids) and ``port`` (torchrun's) keep chains
    that run at once on one machine apart; ``threads`` sets the torch
    threads of a CPU run."""
    if gpus:
        cmd = ['bash', osp.join(tools, 'dist_train.sh'), config, str(gpus)]
    else:
        cmd = [sys.executable, osp.join(tools, 'train.py'), config]
    cmd += ['--work-dir', work_dir]
    if resume:
        cmd.append('--resume')
    cmd += ['--cfg-options'] + list(options)
    env = {}
    if gpus:
        # dist_run.sh runs $PYTHON (else the first python on PATH).
        # torchrun forwards SIGUSR1, the stop before a requeue, to the ranks
        # only when asked to (--signals-to-handle, read from this variable;
        # torch >= 2.9, older ones ignore it); it forwards the other four by
        # default.
        env.update(PYTHON=sys.executable,
                   PET_SIGNALS_TO_HANDLE='SIGTERM,SIGINT,SIGHUP,SIGQUIT,'
                   'SIGUSR1')
    if devices is not None:
        env['CUDA_VISIBLE_DEVICES'] = ','.join(map(str, devices))
    if port is not None:
        env['PORT'] = str(port)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    return cmd, env


def outcome(name, code, seconds):
    """How a chain ended, for its progress line: done, stopped where it
    resumes (exit code 75) or failed."""
    if code == 0:
        how = 'done'
    elif code == REQUEUE_EXIT_CODE:
        how = f'stopped ({code}: rerun to resume)'
    else:
        how = f'FAILED ({code})'
    return f'{name} {how} in {seconds:.0f} s'


# ---------------------------------------------------------------------------
# Chains running at once on this machine: the pool, submitit-local.


def visible_gpus():
    """The ids of the GPUs this process may use: ``CUDA_VISIBLE_DEVICES``
    when set (ids or UUIDs, as given), else every device torch sees."""
    listed = os.environ.get('CUDA_VISIBLE_DEVICES')
    if listed is not None:
        return [d.strip() for d in listed.split(',') if d.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(gpus, parallel, visible, base_port=DEFAULT_PORT):
    """``[(devices, port)]``: what each of the ``parallel`` chains running
    at once on this machine gets, its own ``gpus`` of the ``visible`` GPUs
    and its own torchrun port (two chains on one port or one GPU would
    meet in one rendezvous or share the memory)."""
    if gpus * parallel > len(visible):
        raise SystemExit(
            f'--gpus {gpus} x --parallel {parallel} needs {gpus * parallel} '
            f'GPUs; {len(visible)} are visible ({",".join(visible) or "none"}'
            ', from CUDA_VISIBLE_DEVICES or torch): lower --parallel or '
            '--gpus')
    return [(visible[s * gpus:(s + 1) * gpus], base_port + s)
            for s in range(parallel)]


def local_slots(gpus, parallel, base_port=DEFAULT_PORT):
    """The slots of the ``parallel`` chains that run at once on this
    machine (the pool and submitit's local executor): with ``gpus`` per
    chain, :func:`gpu_slots` of the visible GPUs."""
    parallel = max(1, parallel)
    if not gpus:
        return [(None, None)] * parallel
    return gpu_slots(gpus, parallel, visible_gpus(), base_port)


def cpu_threads(parallel):
    """Torch threads of each of ``parallel`` CPU chains on this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel))


def launch(chain, tools, slot, gpus=0, threads=None):
    """Run one :class:`ChainRun` in a slot of :func:`local_slots`; its exit
    code."""
    devices, port = slot
    cmd, env = chain_command(
        tools, chain.config, chain.options, chain.work_dir, gpus=gpus,
        resume=osp.isdir(chain.work_dir), devices=devices, port=port,
        threads=threads)
    with open(chain.log, 'a') as f:
        f.write(f'\n$ {" ".join(cmd)}\n')
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **env}).returncode


def run_one(chain, tools, slots, gpus=0, threads=None):
    """Launch one chain in a free slot of the queue ``slots``; returns its
    exit code and seconds taken."""
    slot = slots.get()
    start = time.time()
    try:
        code = launch(chain, tools, slot, gpus, threads)
    finally:
        slots.put(slot)
    return code, time.time() - start


def run_pool(chains, tools, slots, gpus=0):
    """The chains (:class:`ChainRun`), ``len(slots)`` at a time in a
    thread pool, each in a slot of ``slots`` (on ``gpus`` GPUs, else with
    its share of the CPUs), with a progress line as each ends; the names
    of those that did not finish."""
    parallel = len(slots)
    threads = None if gpus else cpu_threads(parallel)
    free = queue.Queue()
    for slot in slots:
        free.put(slot)
    # Runs finished earlier take no time: the ETA counts only those to do.
    progress = Progress(len(chains), '[sweep] progress', unit='chains',
                        every=0, interval_s=0)
    unfinished = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run_one, chain, tools, free, gpus, threads):
                   chain.name for chain in chains}
        for future in as_completed(futures):
            name = futures[future]
            code, seconds = future.result()
            if code:
                unfinished.append(name)
            # The pool starts a queued run as soon as one ends.
            left = len(chains) - progress.done - 1
            running = min(parallel, left)
            progress.update(note=(f'{outcome(name, code, seconds)}; '
                                  f'{running} running, {left - running} '
                                  'waiting'))
    return [chain.name for chain in chains if chain.name in unfinished]
