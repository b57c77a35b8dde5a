"""Launching the chains of a sweep (``tools/analysis/sweep.py``) as
submitit jobs: one SLURM job array, or submitit's local executor.

A :class:`ChainJob` runs one chain's command (:func:`chain_command`) in
its own process group (:func:`start_command`); before a time limit or a
preemption it stops the chain where it resumes (:func:`stop_run`) and is
requeued. :class:`JobOptions` and :func:`make_executor` set up submitit
(SLURM parameters, :func:`parse_slurm_args`); :func:`run_jobs` submits the
chains and waits for them. Running chains on this machine, and what both
launchers share (the chain's command, the slots), is
:mod:`mmtolerant.utils.chain_jobs`.

This is a module of the installed package, not of the tool's script,
because submitit pickles each job for the process that runs it: a
:class:`ChainJob` is pickled by reference to this module, where one
defined in a script run as ``__main__`` would be pickled by value.
"""
import functools
import os
import os.path as osp
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from mmtolerant.utils.chain_jobs import chain_command, cpu_threads, outcome
from mmtolerant.utils.progress import Progress

# Seconds between two looks at the submitted jobs (on SLURM each look may
# ask sacct).
POLL_S = {'slurm': 10, 'submitit-local': 1}


class ChainJob:
    """One chain as a submitit job, requeued where it stops.

    A call runs the chain's command (:func:`chain_command`, with
    ``--resume`` once its work_dir exists) and returns its exit code.
    Before a time limit or a preemption, submitit calls :meth:`checkpoint`
    in the job: it asks the training to stop (SIGUSR1: the chain saves at
    its next iteration boundary and exits with code 75), waits for it, and
    hands submitit this same job to requeue, which resumes the chain.

    Args:
        name (str): The run's name (its work_dir's and log's).
        config (str): The chain config.
        options (list[str]): Its ``--cfg-options``.
        work_dir (str): The chain's work_dir.
        log (str): The file the command's output is appended to.
        tools (str): The ``tools`` folder of the checkout whose
            ``train.py`` / ``dist_train.sh`` the job runs.
        gpus (int): GPUs of the chain (``tools/dist_train.sh``), 0: one
            process (``tools/train.py``).
        devices (list, optional): GPU ids to use (the local executor's
            slot); None: those the cluster gave the job.
        port (int, optional): torchrun's port; None: a free one, as jobs of
            an array may share a node.
        threads (int, optional): Torch threads of a CPU run.
        stop_timeout_s (float): How long :meth:`checkpoint` waits for the
            training to stop before it kills it.
    """

    def __init__(self, name, config, options, work_dir, log, tools, gpus=0,
                 devices=None, port=None, threads=None, stop_timeout_s=60):
        self.name = name
        self.config = config
        self.options = list(options)
        self.work_dir = work_dir
        self.log = log
        self.tools = tools
        self.gpus = gpus
        self.devices = devices
        self.port = port
        self.threads = threads
        self.stop_timeout_s = stop_timeout_s
        self._pid = None  # the running command's, which leads its group

    def __call__(self):
        from submitit import JobEnvironment
        job = JobEnvironment()
        cmd, env = chain_command(
            self.tools, self.config, self.options, self.work_dir,
            gpus=self.gpus, resume=osp.isdir(self.work_dir),
            devices=self.devices,
            port=(self.port or free_port()) if self.gpus else None,
            threads=self.threads)
        # SIGUSR1 is the training's stop; where a cluster sends it to every
        # process of the job, this one must not die of it.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        with open(self.log, 'a') as f:
            f.write(f'\n# {self.name}: job {job.job_id} on {job.hostname}, '
                    f'pid {os.getpid()}\n$ {" ".join(cmd)}\n')
            f.flush()
            proc = start_command(cmd, env, f, self.gpus > 0)
        self._pid = proc.pid
        try:
            return proc.wait()
        finally:
            # Cancelled (an exception here): the training stops where it
            # can resume rather than run on without its job.
            if self._pid is not None and proc.poll() is None:
                stop_run(self._pid, self.gpus > 0, self.stop_timeout_s)
            self._pid = None

    def checkpoint(self):
        """Stop the training where it resumes; the job to requeue (what
        submitit calls on its signal; ``submitit.helpers.Checkpointable``
        would only add the last line)."""
        from submitit.helpers import DelayedSubmission
        if self._pid is not None:
            stop_run(self._pid, self.gpus > 0, self.stop_timeout_s)
            self._pid = None
        return DelayedSubmission(self)

    def __getstate__(self):
        # Pickled for the requeue: the new job starts its own command.
        return {**self.__dict__, '_pid': None}


def start_command(cmd, env, out, whole_group):
    """Start a chain's command (with ``env`` added, output to ``out``) as
    a job does: in its own process group, which :func:`stop_run` signals
    (``whole_group``: bash and torchrun) and waits for."""
    from submitit import JobEnvironment
    return subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
        start_new_session=True, preexec_fn=functools.partial(
            _child_signals, JobEnvironment._usr_sig(), whole_group))


def _child_signals(warning, whole_group):
    """In the chain's command, before it starts. SLURM sends the job's
    ``warning`` (submitit's signal) to every process of the job; the job
    alone answers it, so the training ignores it. SIGUSR1 sent to a whole
    group: bash ignores it and waits for torchrun, which forwards it to the
    ranks; sent to one training process: it stops it (its handler, or its
    death before it has one)."""
    signal.signal(warning, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1,
                  signal.SIG_IGN if whole_group else signal.SIG_DFL)


def free_port():
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(('', 0))
        return s.getsockname()[1]


def stop_run(pid, whole_group, timeout_s):
    """Ask the command ``pid`` (our child from :func:`start_command`, the
    leader of its process group) to stop where it resumes: SIGUSR1 to it,
    or to its whole group. Waits until the group is gone; what is left
    after ``timeout_s`` is killed."""
    try:
        (os.killpg if whole_group else os.kill)(pid, signal.SIGUSR1)
    except ProcessLookupError:
        pass
    if not wait_group(pid, timeout_s):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_group(pid, 10)


def wait_group(pid, timeout_s):
    """Reap our child ``pid`` and wait until no process of its group is
    left; whether that happened within ``timeout_s``. (``os.waitpid``, not
    ``Popen.wait``: this runs in a signal handler while the job's main
    code is inside ``Popen.wait``, whose lock it holds.)"""
    deadline = time.monotonic() + timeout_s
    reaped = False
    while True:
        if not reaped:
            try:
                reaped = os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:
                reaped = True
        if reaped:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


@dataclass
class JobOptions:
    """How the chains run as submitit jobs.

    Args:
        launcher (str): ``'slurm'`` (a job array) or ``'submitit-local'``
            (submitit's local executor).
        work_dir (str): The sweep's work_dir: submitit's logs go to its
            ``submitit/`` folder, and the jobs are named after it.
        tools (str): The ``tools`` folder the jobs run (:class:`ChainJob`).
        gpus (int): GPUs per chain, 0: a CPU run.
        parallel (int): Chains at once with the local executor.
        time (int): Minutes per job before it is requeued.
        signal_delay (int): Seconds before its time limit that a job is
            told to stop.
        max_requeues (int): Requeues of a job after its time limit.
        partition (str, optional): The SLURM partition.
        cpus_per_task (int, optional): CPUs per job (SLURM); a CPU run
            takes that many torch threads.
        array_parallelism (int, optional): Chains at once on SLURM.
        slurm_args (list[str]): ``key=value`` (:func:`parse_slurm_args`).
    """
    launcher: str
    work_dir: str
    tools: str
    gpus: int
    parallel: int
    time: int
    signal_delay: int
    max_requeues: int
    partition: Optional[str] = None
    cpus_per_task: Optional[int] = None
    array_parallelism: Optional[int] = None
    slurm_args: Sequence[str] = ()


def parse_slurm_args(items):
    """``--slurm-args key=value ...``: submitit's SLURM parameters (``qos``,
    ``account``, ``constraint``, ``mem_gb``, ``signal_delay_s``...) by their
    names, any other ``sbatch`` option under its own name. Numbers are
    passed as numbers."""
    from submitit import AutoExecutor, SlurmExecutor
    known = (SlurmExecutor._valid_parameters() |
             AutoExecutor._valid_parameters())
    params, extra = {}, {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise SystemExit(f'--slurm-args takes key=value; got {item!r}')
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
        if key in known:
            params[f'slurm_{key}'] = value
        else:
            extra[key.replace('_', '-')] = value
    if extra:
        params['slurm_additional_parameters'] = extra
    return params


def executor_parameters(options):
    """The submitit parameters of every chain's job: one task with
    ``gpus`` GPUs, ``time`` minutes, and on SLURM the partition, the
    CPUs, the array's parallelism, the warning before the time limit and
    ``slurm_args``."""
    params = dict(
        name=f'sweep_{osp.basename(osp.abspath(options.work_dir))}',
        timeout_min=options.time, nodes=1, tasks_per_node=1,
        gpus_per_node=options.gpus or None,
        cpus_per_task=options.cpus_per_task,
        slurm_partition=options.partition,
        slurm_signal_delay_s=options.signal_delay)
    if options.array_parallelism:
        params['slurm_array_parallelism'] = options.array_parallelism
    params.update(parse_slurm_args(options.slurm_args))
    return {k: v for k, v in params.items() if v is not None}


def make_executor(options):
    """submitit's executor for ``options.launcher``, logging to
    ``work_dir/submitit``."""
    try:
        import submitit
    except ImportError:
        raise SystemExit(f'--launcher {options.launcher} needs submitit: pip '
                         "install 'mmtolerant[cluster]' (or submitit)")
    cluster = 'slurm' if options.launcher == 'slurm' else 'local'
    executor = submitit.AutoExecutor(
        osp.join(options.work_dir, 'submitit'), cluster=cluster,
        slurm_max_num_timeout=options.max_requeues,
        local_max_num_timeout=options.max_requeues)
    executor.update_parameters(**executor_parameters(options))
    return executor


def chain_job(chain, options, slot=(None, None)):
    """The :class:`ChainJob` of a :class:`ChainRun` (absolute paths: the
    job may start elsewhere)."""
    devices, port = slot
    on_cpu = not options.gpus
    if options.launcher == 'slurm':
        threads = options.cpus_per_task if on_cpu else None
    else:
        threads = cpu_threads(options.parallel) if on_cpu else None
    return ChainJob(
        chain.name, osp.abspath(chain.config), chain.options,
        osp.abspath(chain.work_dir), osp.abspath(chain.log),
        osp.abspath(options.tools), gpus=options.gpus, devices=devices,
        port=port, threads=threads,
        # submitit's requeue itself needs a few of the seconds the warning
        # leaves.
        stop_timeout_s=max(10, executor_parameters(options)[
            'slurm_signal_delay_s'] - 30))


def submit_array(executor, jobs):
    """Every job in one SLURM job array; the submitit jobs."""
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    return submitted


def run_jobs(chains, options, slots=None):
    """The chains (:class:`ChainRun`) as submitit jobs, with a progress
    line as each ends: on SLURM one job array
    (``array_parallelism`` at a time); with the local executor
    ``parallel`` at a time, in ``slots``. The names of those that did not
    finish."""
    executor = make_executor(options)
    local = options.launcher != 'slurm'
    waiting = list(chains)
    running = {}  # name: (submitit job, slot, submission time)
    if not local:
        jobs = submit_array(executor,
                            [chain_job(chain, options) for chain in chains])
        for chain, job in zip(chains, jobs):
            running[chain.name] = (job, None, time.time())
            print(f'  {chain.name}: job {job.job_id}', flush=True)
        waiting = []
    print(f'submitit logs in {executor.folder}', flush=True)
    free = list(slots or [])
    progress = Progress(len(chains), '[sweep] progress', unit='chains',
                        every=0, interval_s=0)
    unfinished = []
    try:
        while running or waiting:
            while local and waiting and free:
                chain, slot = waiting.pop(0), free.pop(0)
                job = executor.submit(chain_job(chain, options, slot))
                running[chain.name] = (job, slot, time.time())
                print(f'  {chain.name}: job {job.job_id}', flush=True)
            for name, (job, slot, start) in list(running.items()):
                if not job.done():
                    continue
                del running[name]
                if slot is not None:
                    free.append(slot)
                code = job_exit_code(job)
                if code != 0:
                    unfinished.append(name)
                note = (outcome(name, code, time.time() - start)
                        if code is not None else
                        f'{name} FAILED (job {job.job_id}: see '
                        f'{job.paths.stderr})')
                progress.update(note=f'{note}; ' + (
                    f'{len(running)} running, {len(waiting)} waiting'
                    if local else f'{len(running)} queued or running'))
            if running:
                time.sleep(POLL_S[options.launcher])
    except KeyboardInterrupt:
        for job, _, _ in running.values():
            job.cancel(check=False)
        raise SystemExit(f'cancelled {len(running)} jobs; rerun the same '
                         'command to resume their chains')
    return [chain.name for chain in chains if chain.name in unfinished]


def job_exit_code(job):
    """The exit code of a finished job's chain; None when the job itself
    failed (no result: killed, out of requeues)."""
    if job.exception() is not None:
        return None
    return job.result()
