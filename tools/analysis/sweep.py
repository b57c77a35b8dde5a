r"""Run chains over configs x a grid (eta, K, lambda, tau...) x seeds and
tabulate them.

Every run is an ordinary chain run by tools/train.py with --cfg-options, in
its own work_dir under --work-dir; finished runs are skipped and interrupted
ones resumed, so a killed sweep continues where it stopped. The reports are
collected into:

- sweep.md / sweep.json: per setting, mean ± std over seeds of the
  patriarch, the final generation, the best student and the final ensemble;
- generations.md / sweep_generations.png: per setting and generation, mean ±
  std over seeds of top-1, the ensemble M1..Mm, the mean top-1 probability
  (and the training set's, with generations.report_train), and with
  --baseline the paired difference to the baseline run of the same seed.

A grid over one chain config:

    python tools/analysis/sweep.py \
        configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py \
        --grid generations.teacher_loss.eta=0.6,0.8,1.0 \
        generations.teacher_loss.k=2,3 --seeds 0 1 2 --parallel 2 \
        --cfg-options generations.num_generations=2 \
        --work-dir work_dirs/sweep_eta_k

Several chain configs with paired seeds (a setting is named by its config
file, then its grid values):

    python tools/analysis/sweep.py \
        configs/tsd/ban_small-convnet_1xb128_fashion-mnist-5k.py \
        configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py \
        configs/tsd/ban-lsr_small-convnet_1xb128_fashion-mnist-5k.py \
        configs/tsd/ban-cp_small-convnet_1xb128_fashion-mnist-5k.py \
        --seeds 0 1 2 --parallel 2 \
        --baseline ban_small-convnet_1xb128_fashion-mnist-5k \
        --work-dir work_dirs/fashion-mnist-5k_study

On this machine (--launcher pool, the default), --parallel P runs P chains
at once, each with (CPUs / P) torch threads; --gpus N runs each chain with
tools/dist_train.sh on N GPUs instead, and the P chains running at once get
N GPUs each of CUDA_VISIBLE_DEVICES (else of all GPUs) and torchrun ports
--port, --port + 1, ... (29500 by default).

On a SLURM cluster, every chain is one job of a job array, submitted
through submitit (pip install 'mmtolerant[cluster]'), with one task and
--gpus GPUs:

    python tools/analysis/sweep.py \
        configs/tsd/{ban,tsd}_resnet18-w16_1xb128_fashion-mnist.py \
        --seeds 0 1 2 --baseline ban_resnet18-w16_1xb128_fashion-mnist \
        --launcher slurm --partition gpu --gpus 1 --cpus-per-task 8 \
        --time 240 --array-parallelism 4 --slurm-args qos=normal \
        --work-dir work_dirs/fashion-mnist_resnet18_study

--signal-delay seconds (120) before its --time limit, SLURM warns the job
(submitit's SIGUSR2): the job sends the chain SIGUSR1, the chain saves at
its next iteration and exits with code 75, and submitit requeues the job
(at most --max-requeues times after a time limit; a preemption that SLURM
signals so is requeued too, uncounted). The requeued job resumes the chain
(--resume). The sweep waits for the jobs, with a progress line as each
ends, then tabulates; Ctrl-C cancels the jobs. Rerunning the same command
skips finished chains and submits the others again, which resume (so do
not rerun it while its jobs still run: a chain's work_dir takes one run at
a time). submitit's logs are in work_dir/submitit/, each chain's output in
work_dir/<run>.log. --launcher submitit-local runs the same jobs on this
machine (--parallel at a time, GPUs as the pool) with the same options: a
dry run of the cluster path, and what the tests use.
"""
import argparse
import functools
import itertools
import json
import os
import os.path as osp
import queue
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from mmtolerant.evaluation.chain_results import load_chain_report
from mmtolerant.evaluation.mean_std import format_mean_std, mean_std
from mmtolerant.utils.chain_layout import CHAIN_FILE
from mmtolerant.utils.preemption import REQUEUE_EXIT_CODE
from mmtolerant.utils.progress import Progress

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
# torchrun's port of the first chain running on this machine; the next
# ones take the following ports.
DEFAULT_PORT = 29500
# Seconds between two looks at the submitted jobs (on SLURM each look may
# ask sacct).
POLL_S = {'slurm': 10, 'submitit-local': 1}
LAUNCHERS = ('pool', 'slurm', 'submitit-local')
SLURM_ONLY = ('partition', 'cpus_per_task', 'array_parallelism',
              'slurm_args')


def parse_grid(items):
    grid = {}
    for item in items:
        if '=' not in item:
            raise SystemExit(f'--grid takes key=v1,v2,...; got {item!r}')
        key, values = item.split('=', 1)
        grid[key] = [v for v in values.split(',') if v != '']
        if not grid[key]:
            raise SystemExit(f'--grid {key} has no values')
    return grid


def config_name(config):
    return osp.splitext(osp.basename(config))[0]


def setting_name(config, combo, several_configs):
    parts = [f'{k.split(".")[-1]}{v}' for k, v in combo]
    if several_configs:
        parts.insert(0, config_name(config))
    return '_'.join(parts) or config_name(config)


def run_name(setting, seed):
    return f'{setting}_seed{seed}'


def chain_options(combo, seed, cfg_options):
    """The ``--cfg-options`` of one run: its grid values, its seed, then
    the options of every run."""
    return ([f'{k}={v}' for k, v in combo] + [f'randomness.seed={seed}'] +
            list(cfg_options or []))


def chain_command(config, options, work_dir, gpus=0, resume=False,
                  devices=None, port=None, threads=None):
    """The command of one chain and the variables it adds to the
    environment: ``tools/train.py`` (``tools/dist_train.sh`` on ``gpus``
    GPUs), with ``--resume`` when its work_dir exists. ``devices`` (GPU
    ids) and ``port`` (torchrun's) keep chains that run at once on one
    machine apart; ``threads`` sets the torch threads of a CPU run."""
    if gpus:
        cmd = ['bash', osp.join(TOOLS, 'dist_train.sh'), config, str(gpus)]
    else:
        cmd = [sys.executable, osp.join(TOOLS, 'train.py'), config]
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


def local_slots(args):
    """The slots of the chains that run at once on this machine (the pool
    and submitit's local executor): GPUs and port with ``--gpus``."""
    parallel = max(1, args.parallel)
    if not args.gpus:
        return [(None, None)] * parallel
    return gpu_slots(args.gpus, parallel, visible_gpus(), args.port)


def cpu_threads(parallel):
    """Torch threads of each of ``parallel`` CPU chains on this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel))


def launch(config, options, work_dir, args, log, slot):
    """Run one chain in a slot of :func:`local_slots`; its exit code."""
    devices, port = slot
    cmd, env = chain_command(
        config, options, work_dir, gpus=args.gpus,
        resume=osp.isdir(work_dir), devices=devices, port=port,
        threads=None if args.gpus else cpu_threads(args.parallel))
    with open(log, 'a') as f:
        f.write(f'\n$ {" ".join(cmd)}\n')
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **env}).returncode


def summarise(records):
    last = records[-1]
    return dict(
        m0_top1=records[0]['top1'],
        m0_mean_top1_prob=records[0]['mean_top1_prob'],
        m0_train_top1=records[0].get('train_top1'),
        final_top1=last['top1'],
        best_student_top1=max(r['top1'] for r in records[1:]) if len(
            records) > 1 else None,
        final_ensemble_top1=last['ensemble_top1'],
        generations=len(records))


def cell(values, digits=2):
    return format_mean_std(*mean_std(values), digits)


SUMMARY_KEYS = ('m0_top1', 'm0_mean_top1_prob', 'm0_train_top1',
                'final_top1', 'best_student_top1', 'final_ensemble_top1')

GEN_KEYS = (('top1', 'top-1', 2), ('ensemble_top1', 'ensemble M1..Mm', 2),
            ('mean_top1_prob', 'mean top-1 prob', 3),
            ('train_top1', 'train top-1', 2),
            ('train_mean_top1_prob', 'train mean top-1 prob', 3))


def aggregate(settings, rows):
    """Per setting, mean ± std over seeds of the run summaries; and the
    sweep.md table."""
    table = ['| setting | seeds | M0 top-1 | M0 mean top-1 prob | M0 train '
             'top-1 | final top-1 | best student top-1 | final ensemble |',
             '|' + ' --- |' * 8]
    aggregated = []
    for setting, (config, combo) in settings.items():
        mine = [r for r in rows if r['name'] == setting]
        if not mine:
            continue
        agg = dict(name=setting, config=config, setting=dict(combo),
                   seeds=[r['seed'] for r in mine])
        cells = []
        for key in SUMMARY_KEYS:
            values = [r[key] for r in mine]
            agg[key], agg[f'{key}_std'] = mean_std(values)
            cells.append(cell(values, 4 if 'prob' in key else 2))
        aggregated.append(agg)
        table.append(f'| {setting} | {len(mine)} | ' + ' | '.join(cells) +
                     ' |')
    return aggregated, table


def per_generation(settings, chains, seeds, baseline):
    """{setting: [{generation, n, key: [mean, std], ...}]} and its table."""
    out = {}
    lines = []
    for setting in settings:
        mine = {s: chains[(setting, s)] for s in seeds
                if (setting, s) in chains}
        if not mine:
            continue
        base = {s: chains[(baseline, s)] for s in seeds
                if baseline and (baseline, s) in chains}
        show = [k for k in GEN_KEYS
                if any(k[0] in r for rs in mine.values() for r in rs)]
        paired = bool(base) and setting != baseline
        header = ['gen', 'seeds'] + [k[1] for k in show] + (
            [f'top-1 − {baseline} (paired)',
             f'ensemble − {baseline} (paired)'] if paired else [])
        lines += [f'### {setting}', '', '| ' + ' | '.join(header) + ' |',
                  '|' + ' --- |' * len(header)]
        rows = []
        for m in range(max(len(rs) for rs in mine.values())):
            row, cells = generation_row(m, mine, show,
                                        base if paired else None)
            rows.append(row)
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
        out[setting] = rows
    return out, lines


def generation_row(m, chains, show, base=None):
    """Generation m of one setting over its seeds' chains: its JSON row and
    table cells; with ``base`` (the baseline's chains by seed), the paired
    differences to it."""
    recs = {s: rs[m] for s, rs in chains.items() if len(rs) > m}
    row = dict(generation=m, n=len(recs))
    cells = [f'M{m}', str(len(recs))]
    for key, _, digits in show:
        values = [r.get(key) for r in recs.values()]
        row[key] = list(mean_std(values))
        cells.append(cell(values, digits))
    for key in ('top1', 'ensemble_top1') if base else ():
        diffs = [r[key] - base[s][m][key] for s, r in recs.items()
                 if s in base and len(base[s]) > m]
        row[f'{key}_minus_baseline'] = list(mean_std(diffs))
        row[f'{key}_wins'] = sum(d > 0 for d in diffs)
        cells.append(
            cell(diffs) + f' ({sum(d > 0 for d in diffs)}/'
            f'{len(diffs)} above)' if diffs else '—')
    return row, cells


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2])
    parser.add_argument('configs', nargs='+', help='chain configs')
    parser.add_argument('--grid', nargs='+', default=[],
                        help='key=v1,v2,... (dotted config keys)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='key=value settings applied to every run')
    parser.add_argument('--baseline', default=None,
                        help='setting name (as printed by --dry-run) to '
                        'which every other setting is compared seed by seed')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--dry-run', action='store_true',
                        help='list the runs and stop')
    launch = parser.add_argument_group('launching')
    launch.add_argument(
        '--launcher', choices=LAUNCHERS, default='pool',
        help='pool: processes on this machine (default); slurm: a SLURM job '
        'array through submitit, one job per chain, requeued after a time '
        "limit or a preemption; submitit-local: submitit's local executor, "
        'the same jobs on this machine (a dry run of the cluster path; the '
        'tests use it)')
    launch.add_argument('--parallel', type=int, default=1,
                        help='chains at once on this machine (pool, '
                        'submitit-local)')
    launch.add_argument('--gpus', type=int, default=0,
                        help='GPUs per chain (tools/dist_train.sh); on this '
                        'machine each chain running at once gets its own')
    launch.add_argument('--port', type=int, default=DEFAULT_PORT,
                        help='torchrun port of the first chain running at '
                        'once on this machine; the others take the next ones')
    launch.add_argument('--time', type=int, default=24 * 60,
                        help="minutes per job before it is requeued (within "
                        "the partition's limit; default one day)")
    launch.add_argument('--partition', help='SLURM partition')
    launch.add_argument('--cpus-per-task', type=int,
                        help='CPUs per job (SLURM)')
    launch.add_argument('--array-parallelism', type=int,
                        help="chains at once on SLURM (the array's %%N; "
                        'default: all)')
    launch.add_argument('--signal-delay', type=int, default=120,
                        help='seconds before its time limit that a job is '
                        'told to stop (the chain saves and is requeued)')
    launch.add_argument('--max-requeues', type=int, default=10,
                        help='requeues of a job after its time limit '
                        '(preemptions do not count)')
    launch.add_argument('--slurm-args', nargs='+', default=[],
                        help="key=value: submitit's SLURM parameters (qos, "
                        'account, constraint, mem_gb, setup...) or any other '
                        'sbatch option')
    args = parser.parse_args()
    if args.launcher == 'pool':
        given = [f'--{k.replace("_", "-")}' for k in SLURM_ONLY
                 if getattr(args, k)]
        if given:
            parser.error(f'{" ".join(given)}: for --launcher slurm (or its '
                         'dry run, submitit-local), not pool')
    for key in ('parallel', 'time', 'signal_delay'):
        if getattr(args, key) < 1:
            parser.error(f'--{key.replace("_", "-")} must be >= 1, got '
                         f'{getattr(args, key)}')
    if args.gpus < 0:
        parser.error(f'--gpus must be >= 0, got {args.gpus}')
    return args


def plan(args):
    """The grid, the settings ``{name: (config, combo)}`` (configs x grid
    values) and the runs ``[(setting, seed)]`` (settings x seeds)."""
    for config in args.configs:
        if not osp.isfile(config):
            raise SystemExit(f'config {config!r} does not exist')
    grid = parse_grid(args.grid)
    combos = [tuple(zip(grid, values))
              for values in itertools.product(*grid.values())]
    several = len(args.configs) > 1
    settings = {}
    for config in args.configs:
        for combo in combos:
            name = setting_name(config, combo, several)
            if name in settings:
                raise SystemExit(f'two settings are both named {name!r}')
            settings[name] = (config, combo)
    if args.baseline is not None and args.baseline not in settings:
        raise SystemExit(f'--baseline {args.baseline!r} is not one of the '
                         f'settings {list(settings)}')
    runs = [(name, seed) for name in settings for seed in args.seeds]
    return grid, settings, runs


def is_finished(work_dir):
    """Whether the run's report has every generation its chain.json
    asks for."""
    chain_file = osp.join(work_dir, CHAIN_FILE)
    if not osp.isfile(chain_file):
        return False
    try:
        records = load_chain_report(work_dir)
    except FileNotFoundError:
        return False
    with open(chain_file) as f:
        return len(records) == json.load(f)['num_generations'] + 1


def todo_runs(args, runs):
    """The runs not finished earlier (those are named as such)."""
    todo = []
    for run in runs:
        name = run_name(*run)
        if is_finished(osp.join(args.work_dir, name)):
            print(f'  {name}: finished earlier', flush=True)
        else:
            todo.append(run)
    return todo


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


def run_one(run, settings, args, slots):
    """Launch one chain in a free slot; returns its exit code and seconds
    taken."""
    setting, seed = run
    config, combo = settings[setting]
    name = run_name(setting, seed)
    slot = slots.get()
    start = time.time()
    try:
        code = launch(config, chain_options(combo, seed, args.cfg_options),
                      osp.join(args.work_dir, name), args,
                      osp.join(args.work_dir, f'{name}.log'), slot)
    finally:
        slots.put(slot)
    return code, time.time() - start


def run_all(args, settings, todo, slots):
    """The runs of ``todo``, ``--parallel`` at a time in a thread pool,
    each in a slot of ``slots``, with a progress line as each ends; the
    names of those that did not finish."""
    parallel = len(slots)
    free = queue.Queue()
    for slot in slots:
        free.put(slot)
    # Runs finished earlier take no time: the ETA counts only those to do.
    progress = Progress(len(todo), '[sweep] progress', unit='chains', every=0,
                        interval_s=0)
    unfinished = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run_one, run, settings, args, free):
                   run_name(*run) for run in todo}
        for future in as_completed(futures):
            name = futures[future]
            code, seconds = future.result()
            if code:
                unfinished.append(name)
            # The pool starts a queued run as soon as one ends.
            left = len(todo) - progress.done - 1
            running = min(parallel, left)
            progress.update(note=(f'{outcome(name, code, seconds)}; '
                                  f'{running} running, {left - running} '
                                  'waiting'))
    return [run_name(*run) for run in todo if run_name(*run) in unfinished]


# ---------------------------------------------------------------------------
# Chains as submitit jobs: a SLURM job array, or submitit's local executor.


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

    def __init__(self, name, config, options, work_dir, log, gpus=0,
                 devices=None, port=None, threads=None, stop_timeout_s=60):
        self.name = name
        self.config = config
        self.options = list(options)
        self.work_dir = work_dir
        self.log = log
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
            self.config, self.options, self.work_dir, gpus=self.gpus,
            resume=osp.isdir(self.work_dir), devices=self.devices,
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


def executor_parameters(args):
    """The submitit parameters of every chain's job: one task with
    ``--gpus`` GPUs, ``--time`` minutes, and on SLURM the partition, the
    CPUs, the array's parallelism, the warning before the time limit and
    ``--slurm-args``."""
    params = dict(name=f'sweep_{osp.basename(osp.abspath(args.work_dir))}',
                  timeout_min=args.time, nodes=1, tasks_per_node=1,
                  gpus_per_node=args.gpus or None,
                  cpus_per_task=args.cpus_per_task,
                  slurm_partition=args.partition,
                  slurm_signal_delay_s=args.signal_delay)
    if args.array_parallelism:
        params['slurm_array_parallelism'] = args.array_parallelism
    params.update(parse_slurm_args(args.slurm_args))
    return {k: v for k, v in params.items() if v is not None}


def make_executor(args):
    """submitit's executor for ``--launcher``, logging to
    ``work_dir/submitit``."""
    try:
        import submitit
    except ImportError:
        raise SystemExit(f'--launcher {args.launcher} needs submitit: pip '
                         "install 'mmtolerant[cluster]' (or submitit)")
    cluster = 'slurm' if args.launcher == 'slurm' else 'local'
    executor = submitit.AutoExecutor(
        osp.join(args.work_dir, 'submitit'), cluster=cluster,
        slurm_max_num_timeout=args.max_requeues,
        local_max_num_timeout=args.max_requeues)
    executor.update_parameters(**executor_parameters(args))
    return executor


def chain_job(run, settings, args, slot=(None, None)):
    """The :class:`ChainJob` of a run (absolute paths: the job may start
    elsewhere)."""
    setting, seed = run
    config, combo = settings[setting]
    name = run_name(setting, seed)
    devices, port = slot
    on_cpu = not args.gpus
    if args.launcher == 'slurm':
        threads = args.cpus_per_task if on_cpu else None
    else:
        threads = cpu_threads(args.parallel) if on_cpu else None
    return ChainJob(
        name, osp.abspath(config),
        chain_options(combo, seed, args.cfg_options),
        osp.abspath(osp.join(args.work_dir, name)),
        osp.abspath(osp.join(args.work_dir, f'{name}.log')), gpus=args.gpus,
        devices=devices, port=port, threads=threads,
        # submitit's requeue itself needs a few of the seconds the warning
        # leaves.
        stop_timeout_s=max(10, executor_parameters(args)[
            'slurm_signal_delay_s'] - 30))


def submit_array(executor, jobs):
    """Every job in one SLURM job array; the submitit jobs."""
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    return submitted


def run_jobs(args, settings, todo, slots=None):
    """The runs of ``todo`` as submitit jobs, with a progress line as each
    ends: on SLURM one job array (``--array-parallelism`` at a time); with
    the local executor ``--parallel`` at a time, in ``slots``. The names of
    those that did not finish."""
    executor = make_executor(args)
    local = args.launcher != 'slurm'
    waiting = list(todo)
    running = {}  # name: (submitit job, slot, submission time)
    if not local:
        jobs = submit_array(executor,
                            [chain_job(run, settings, args) for run in todo])
        for run, job in zip(todo, jobs):
            running[run_name(*run)] = (job, None, time.time())
            print(f'  {run_name(*run)}: job {job.job_id}', flush=True)
        waiting = []
    print(f'submitit logs in {executor.folder}', flush=True)
    free = list(slots or [])
    progress = Progress(len(todo), '[sweep] progress', unit='chains', every=0,
                        interval_s=0)
    unfinished = []
    try:
        while running or waiting:
            while local and waiting and free:
                run, slot = waiting.pop(0), free.pop(0)
                job = executor.submit(chain_job(run, settings, args, slot))
                running[run_name(*run)] = (job, slot, time.time())
                print(f'  {run_name(*run)}: job {job.job_id}', flush=True)
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
                time.sleep(POLL_S[args.launcher])
    except KeyboardInterrupt:
        for job, _, _ in running.values():
            job.cancel(check=False)
        raise SystemExit(f'cancelled {len(running)} jobs; rerun the same '
                         'command to resume their chains')
    return [run_name(*run) for run in todo if run_name(*run) in unfinished]


def job_exit_code(job):
    """The exit code of a finished job's chain; None when the job itself
    failed (no result: killed, out of requeues)."""
    if job.exception() is not None:
        return None
    return job.result()


def collect(work_dir, settings, runs):
    """The records of every run that has a report, ``{(setting, seed):
    records}``, and a summary row per run."""
    rows, chains = [], {}
    for setting, seed in runs:
        try:
            records = load_chain_report(
                osp.join(work_dir, run_name(setting, seed)))
        except FileNotFoundError:
            continue
        chains[(setting, seed)] = records
        config, combo = settings[setting]
        rows.append(dict(name=setting, config=config, setting=dict(combo),
                         seed=seed, **summarise(records)))
    return rows, chains


def write(args, grid, settings, rows, chains):
    """sweep.json/.md/.png and generations.md, sweep_generations.png; the
    tables are printed too."""
    aggregated, table = aggregate(settings, rows)
    generations, gen_lines = per_generation(list(settings), chains,
                                            args.seeds, args.baseline)
    with open(osp.join(args.work_dir, 'sweep.json'), 'w') as f:
        json.dump(dict(configs=args.configs, grid=grid, seeds=args.seeds,
                       cfg_options=args.cfg_options, baseline=args.baseline,
                       runs=rows, aggregated=aggregated,
                       generations=generations), f, indent=2)
    title = (f'Sweep of {" ".join(args.configs)} (mean ± std over seeds '
             f'{args.seeds}; options {" ".join(args.cfg_options)})')
    with open(osp.join(args.work_dir, 'sweep.md'), 'w') as f:
        f.write(title + '\n\n' + '\n'.join(table) + '\n')
    with open(osp.join(args.work_dir, 'generations.md'), 'w') as f:
        f.write(title + '\n\n' + '\n'.join(gen_lines))
    print('\n'.join(table))
    print()
    print('\n'.join(gen_lines))
    if aggregated and grid:
        plot_grid(aggregated, grid, osp.join(args.work_dir, 'sweep.png'))
    if generations:
        plot_generations(generations,
                         osp.join(args.work_dir, 'sweep_generations.png'))


def main():
    args = parse_args()
    grid, settings, runs = plan(args)
    os.makedirs(args.work_dir, exist_ok=True)
    print(f'{len(runs)} chains ({len(settings)} settings x '
          f'{len(args.seeds)} seeds) in {args.work_dir}')
    if args.dry_run:
        for name, seed in runs:
            print('  ', run_name(name, seed))
        return
    todo = todo_runs(args, runs)
    unfinished = []
    if todo and args.launcher == 'slurm':
        unfinished = run_jobs(args, settings, todo)
    elif todo:
        # Checked before any chain starts.
        slots = local_slots(args)
        run = run_all if args.launcher == 'pool' else run_jobs
        unfinished = run(args, settings, todo, slots)
    rows, chains = collect(args.work_dir, settings, runs)
    write(args, grid, settings, rows, chains)
    if unfinished:
        raise SystemExit(f'{len(unfinished)} chains did not finish: '
                         f'{unfinished} (see their logs; rerun the same '
                         'command to resume them)')


def plot_grid(aggregated, grid, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = list(grid)
    x_key = keys[0]
    others = keys[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    series = {}
    for agg in aggregated:
        label = ', '.join([osp.splitext(osp.basename(agg['config']))[0]] * (
            len({a['config'] for a in aggregated}) > 1) + [
                f'{k.split(".")[-1]}={agg["setting"][k]}' for k in others
            ]) or 'final generation'
        series.setdefault(label, []).append(agg)
    for i, (label, aggs) in enumerate(series.items()):
        xs = [float(a['setting'][x_key]) for a in aggs]
        ys = [a['final_top1'] for a in aggs]
        es = [a['final_top1_std'] for a in aggs]
        ax.errorbar(xs, ys, yerr=es, fmt='o-', color=f'C{i}', capsize=3,
                    label=label)
    ax.set_xlabel(x_key)
    ax.set_ylabel('final-generation top-1 (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_generations(generations, path):
    """Left: top-1 per generation (solid, ± std) and ensemble M1..Mm
    (dashed); right: mean top-1 probability on test (solid) and train
    (dotted, with report_train). One colour per setting."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, ax_conf) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for i, (name, rows) in enumerate(generations.items()):
        color = f'C{i % 10}'
        gens = [r['generation'] for r in rows]

        def series(key):
            return ([r[key][0] for r in rows], [r[key][1] for r in rows])

        ys, es = series('top1')
        ax.errorbar(gens, ys, yerr=es, fmt='o-', color=color, capsize=3,
                    label=name)
        ys, _ = series('ensemble_top1')
        ax.plot(gens[1:], ys[1:], '--', color=color, alpha=0.6)
        ys, es = series('mean_top1_prob')
        ax_conf.errorbar(gens, ys, yerr=es, fmt='o-', color=color,
                         capsize=3, label=f'{name} (test)')
        if all('train_mean_top1_prob' in r and r['train_mean_top1_prob'][0]
               is not None for r in rows):
            ys, _ = series('train_mean_top1_prob')
            ax_conf.plot(gens, ys, ':', color=color)
    ax.set_xlabel('generation m')
    ax.set_ylabel('top-1 (%)  (dashed: ensemble M1..Mm)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax_conf.set_xlabel('generation m')
    ax_conf.set_ylabel('mean top-1 probability (dotted: train)')
    ax_conf.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == '__main__':
    main()
