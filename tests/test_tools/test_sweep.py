"""tools/analysis/sweep.py's launchers (mmtolerant/utils/chain_jobs.py,
mmtolerant/utils/submitit_jobs.py): the local pool's GPU split, the SLURM
job array's parameters, and a chain requeued by submitit's local executor.
(Its grid and tables: tests/test_tools/test_analysis_tools.py.)"""
import importlib.util
import json
import os
import os.path as osp
import re
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import CHAIN, REPO
from mmtolerant.utils import chain_jobs, submitit_jobs


@pytest.fixture(scope='module')
def sweep():
    """The tool as a module (its arguments, plan and runs)."""
    spec = importlib.util.spec_from_file_location(
        'sweep_tool', osp.join(REPO, 'tools', 'analysis', 'sweep.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(sweep, monkeypatch, *argv):
    monkeypatch.setattr(sys, 'argv', ['sweep.py', *map(str, argv)])
    return sweep.parse_args()


def test_a_grid_of_names_is_plotted_at_named_positions(sweep, tmp_path):
    """generations.teacher=previous,ensemble (not numbers) gives a plot
    with one named tick per value, as numbers do on a numeric axis."""
    aggregated = [
        dict(config='c.py', setting={'generations.tolerant': t,
                                     'generations.teacher': e},
             final_top1=90 + i, final_top1_std=0.1)
        for i, (t, e) in enumerate([('none', 'previous'),
                                    ('none', 'ensemble'),
                                    ('patriarch', 'previous'),
                                    ('patriarch', 'ensemble')])]
    grid = {'generations.tolerant': ['none', 'patriarch'],
            'generations.teacher': ['previous', 'ensemble']}
    sweep.plot_grid(aggregated, grid, str(tmp_path / 'sweep.png'))
    assert (tmp_path / 'sweep.png').stat().st_size > 1000


def test_gpu_slots_split_the_visible_gpus_and_ports():
    assert chain_jobs.gpu_slots(2, 2, ['4', '5', '6', '7'], 29600) == [
        (['4', '5'], 29600), (['6', '7'], 29601)]
    assert chain_jobs.gpu_slots(1, 3, ['0', '1', '2', '3'], 29500) == [
        (['0'], 29500), (['1'], 29501), (['2'], 29502)]
    with pytest.raises(SystemExit, match=re.escape(
            '--gpus 2 x --parallel 3 needs 6 GPUs; 4 are visible '
            '(4,5,6,7')):
        chain_jobs.gpu_slots(2, 3, ['4', '5', '6', '7'])


def test_chain_command_runs_a_slot_on_its_gpus_and_port(sweep):
    options = sweep.chain_options([('generations.teacher_loss.eta', '0.5')],
                                  3, ['train_cfg.max_epochs=1'])
    assert options == ['generations.teacher_loss.eta=0.5',
                       'randomness.seed=3', 'train_cfg.max_epochs=1']
    # The chains run the tools of the sweep's checkout.
    assert sweep.TOOLS == osp.join(REPO, 'tools')
    cmd, env = chain_jobs.chain_command(sweep.TOOLS, 'c.py', options, 'w',
                                        gpus=2, resume=True,
                                        devices=['6', '7'], port=29501)
    assert cmd == ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), 'c.py',
                   '2', '--work-dir', 'w', '--resume', '--cfg-options',
                   *options]
    assert env['CUDA_VISIBLE_DEVICES'] == '6,7' and env['PORT'] == '29501'
    # torchrun's --signals-to-handle: it forwards the stop to the ranks.
    assert 'SIGUSR1' in env['PET_SIGNALS_TO_HANDLE'].split(',')
    assert env['PYTHON'] == sys.executable
    cmd, env = chain_jobs.chain_command(sweep.TOOLS, 'c.py', options, 'w',
                                        threads=4)
    assert cmd[:3] == [sys.executable,
                       osp.join(REPO, 'tools', 'train.py'), 'c.py']
    assert '--resume' not in cmd
    assert env == {'OMP_NUM_THREADS': '4'}


def fake_chains(monkeypatch, seconds=0.3):
    """Replace the chains' processes by a sleep that records the GPUs and
    port of each and the overlaps of chains running at the same time."""
    lock = threading.Lock()
    running, ran, clashes = {}, [], []

    def run(cmd, stdout, stderr, env):
        me = (set(env['CUDA_VISIBLE_DEVICES'].split(',')), env['PORT'])
        with lock:
            for gpus, port in running.values():
                if gpus & me[0] or port == me[1]:
                    clashes.append((me, (gpus, port)))
            running[threading.get_ident()] = me
            ran.append(dict(cmd=cmd, gpus=me[0], port=me[1],
                            at_once=len(running)))
        time.sleep(seconds)
        with lock:
            del running[threading.get_ident()]
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, 'run', run)
    return ran, clashes


def test_pool_runs_chains_at_once_on_disjoint_gpus_and_ports(
        sweep, monkeypatch, tmp_path):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '4,5,6,7')
    ran, clashes = fake_chains(monkeypatch)
    monkeypatch.setattr(sys, 'argv', [
        'sweep.py', CHAIN, '--seeds', *map(str, range(6)), '--gpus', '2',
        '--parallel', '2', '--port', '29600', '--work-dir',
        str(tmp_path / 'sweep')])
    sweep.main()
    assert len(ran) == 6 and clashes == []
    assert max(r['at_once'] for r in ran) == 2
    for r in ran:
        assert (sorted(r['gpus']), r['port']) in [(['4', '5'], '29600'),
                                                  (['6', '7'], '29601')]
        assert r['cmd'][1].endswith('dist_train.sh') and r['cmd'][3] == '2'


def test_more_gpus_than_visible_stop_the_sweep_before_any_chain(
        sweep, monkeypatch, tmp_path):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '4,5,6,7')
    ran, _ = fake_chains(monkeypatch)
    monkeypatch.setattr(sys, 'argv', [
        'sweep.py', CHAIN, '--seeds', '0', '1', '2', '--gpus', '2',
        '--parallel', '3', '--work-dir', str(tmp_path / 'sweep')])
    with pytest.raises(SystemExit, match=re.escape(
            '--gpus 2 x --parallel 3 needs 6 GPUs; 4 are visible '
            '(4,5,6,7')):
        sweep.main()
    assert ran == []


class FakeExecutor:
    """Runs nothing: a submitted job is done ``seconds`` later, with exit
    code 0; records the slots of the jobs unfinished at each submission."""

    folder = 'submitit'

    def __init__(self, seconds=0.3):
        self.seconds = seconds
        self.jobs, self.clashes = [], []

    def submit(self, chain):
        now = time.monotonic()
        running = [j for j in self.jobs if now < j.end]
        for other in running:
            if set(other.chain.devices) & set(chain.devices) or \
                    other.chain.port == chain.port:
                self.clashes.append((chain.name, other.chain.name))
        job = FakeJob(chain, now + self.seconds, len(self.jobs),
                      len(running) + 1)
        self.jobs.append(job)
        return job


class FakeJob:

    def __init__(self, chain, end, job_id, at_once):
        self.chain, self.end, self.job_id = chain, end, job_id
        self.at_once = at_once

    def done(self):
        return time.monotonic() >= self.end

    def exception(self):
        return None

    def result(self):
        return 0


def test_submitit_local_jobs_get_disjoint_gpus_and_ports_from_their_slots(
        sweep, monkeypatch, tmp_path):
    executor = FakeExecutor()
    monkeypatch.setattr(submitit_jobs, 'make_executor',
                        lambda options: executor)
    monkeypatch.setitem(submitit_jobs.POLL_S, 'submitit-local', 0.05)
    args = parse(sweep, monkeypatch, CHAIN, '--seeds', *range(5),
                 '--launcher', 'submitit-local', '--gpus', 2, '--parallel',
                 2, '--work-dir', tmp_path / 'sweep')
    _, settings, runs = sweep.plan(args)
    slots = chain_jobs.gpu_slots(2, 2, ['4', '5', '6', '7'], 29500)
    assert submitit_jobs.run_jobs(sweep.chain_runs(args, settings, runs),
                                  sweep.job_options(args), slots) == []
    assert len(executor.jobs) == 5 and executor.clashes == []
    assert max(j.at_once for j in executor.jobs) == 2
    for job in executor.jobs:
        assert (job.chain.devices, job.chain.port) in slots


def fake_slurm(folder, monkeypatch):
    """``srun`` (which submitit looks for) and an ``sbatch`` that keeps the
    script it is given in ``folder/sbatch.sh`` and answers as SLURM does."""
    folder.mkdir()
    for name, body in (('srun', 'exit 0'),
                       ('sbatch', f'cp "$1" {folder}/sbatch.sh\n'
                        'echo "Submitted batch job 4242"')):
        path = folder / name
        path.write_text(f'#!/bin/sh\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('PATH', f'{folder}{os.pathsep}{os.environ["PATH"]}')
    return folder / 'sbatch.sh'


def test_slurm_launcher_submits_one_array_with_the_options(
        sweep, monkeypatch, tmp_path):
    script = fake_slurm(tmp_path / 'bin', monkeypatch)
    args = parse(sweep, monkeypatch, CHAIN, '--seeds', 0, 1, '--work-dir',
                 tmp_path / 'sweep', '--launcher', 'slurm', '--partition',
                 'gpu', '--gpus', 2, '--cpus-per-task', 8, '--time', 240,
                 '--array-parallelism', 1, '--slurm-args', 'qos=high',
                 'mem_gb=32', 'reservation=tsd')
    grid, settings, runs = sweep.plan(args)
    options = sweep.job_options(args)
    executor = submitit_jobs.make_executor(options)
    jobs = submitit_jobs.submit_array(executor, [
        submitit_jobs.chain_job(chain, options)
        for chain in sweep.chain_runs(args, settings, runs)])
    assert [job.job_id for job in jobs] == ['4242_0', '4242_1']
    flags = set(re.findall(r'^#SBATCH (\S+)$', script.read_text(), re.M))
    assert {'--array=0-1%1', '--partition=gpu', '--gpus-per-node=2',
            '--ntasks-per-node=1', '--cpus-per-task=8', '--time=240',
            '--signal=USR2@120', '--qos=high', '--mem=32GB',
            '--reservation=tsd'} <= flags
    # Each job runs its own chain, by absolute paths (a job may start in
    # another folder), and takes its port when it starts (chains of an
    # array may share a node). It is pickled by reference to the installed
    # module, which the job imports.
    from submitit.core.utils import DelayedSubmission
    job = DelayedSubmission.load(jobs[1].paths.submitted_pickle).function
    assert type(job) is submitit_jobs.ChainJob
    assert job.tools == osp.join(REPO, 'tools')
    assert job.name == 'tsd_resnet18-w8_1xb64_digits_seed1'
    assert job.config == CHAIN and job.gpus == 2 and job.port is None
    assert job.work_dir == str(tmp_path / 'sweep' / job.name)
    assert 'randomness.seed=1' in job.options
    assert job.stop_timeout_s == 120 - 30


def test_slurm_only_options_are_refused_by_the_pool(sweep, monkeypatch,
                                                    tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(sweep, monkeypatch, CHAIN, '--work-dir', tmp_path,
              '--partition', 'gpu')
    assert '--partition: for --launcher slurm' in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--slurm-args takes key=value; "
                       "got 'qos'"):
        submitit_jobs.parse_slurm_args(['qos'])


def wait_for(predicate, what, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f'no {what} in {timeout_s} s'
        time.sleep(0.2)


def group_gone(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# A training process as the chain's: on SIGUSR1 it exits with code 75
# (after writing what it got).
TRAINING = """import signal, sys, time
def stop(signum, frame):
    open(sys.argv[1], 'w').write('stopped')
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
open(sys.argv[1], 'w').write('ready')
time.sleep(120)
"""


def test_stop_run_reaches_the_training_under_bash_and_waits_for_it(
        tmp_path):
    # As under tools/dist_train.sh: bash leads the group and waits for its
    # child, which alone handles the stop.
    (tmp_path / 'training.py').write_text(TRAINING)
    marker = tmp_path / 'marker'
    with open(tmp_path / 'out', 'w') as out:
        proc = submitit_jobs.start_command(
            ['bash', '-c', f'{sys.executable} {tmp_path}/training.py '
             f'{marker}; echo "bash saw $?"'], {}, out, whole_group=True)
    wait_for(lambda: marker.is_file() and marker.read_text() == 'ready',
             'training start', 60)
    start = time.monotonic()
    submitit_jobs.stop_run(proc.pid, True, 30)
    assert time.monotonic() - start < 10
    assert marker.read_text() == 'stopped' and group_gone(proc.pid)
    # bash outlived the stop (it ignores it) and saw the training's code.
    assert (tmp_path / 'out').read_text() == 'bash saw 75\n'


def test_stop_run_kills_a_run_that_does_not_stop_in_time(tmp_path):
    with open(tmp_path / 'out', 'w') as out:
        proc = submitit_jobs.start_command(
            [sys.executable, '-c', 'import signal, time; signal.signal('
             'signal.SIGUSR1, signal.SIG_IGN); print("ready", flush=True); '
             'time.sleep(120)'], {}, out, whole_group=False)
    wait_for(lambda: 'ready' in (tmp_path / 'out').read_text(),
             'start', 60)
    start = time.monotonic()
    submitit_jobs.stop_run(proc.pid, False, 1)
    assert 1 <= time.monotonic() - start < 10 and group_gone(proc.pid)


@pytest.mark.slow
def test_submitit_local_requeues_a_signalled_job_and_its_chain_resumes(
        tmp_path, python):
    work_dir = tmp_path / 'sweep'
    name = 'tsd_resnet18-w8_1xb64_digits_seed0'
    log = work_dir / f'{name}.log'
    out = open(tmp_path / 'sweep.out', 'w')
    proc = subprocess.Popen(
        [python, 'tools/analysis/sweep.py', CHAIN, '--launcher',
         'submitit-local', '--cfg-options', 'train_cfg.max_epochs=1',
         'generations.num_generations=1',
         'train_dataloader.dataset.indices=256', '--work-dir',
         str(work_dir)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    try:
        # The chain is training (it listens for its stop from then on):
        # send the job the signal SLURM sends before a time limit.
        wait_for(lambda: log.is_file() and '[chain] generation 0/1 (M0)'
                 in log.read_text(), 'chain start')
        pid = int(re.search(r'^# .*: job \S+ on \S+, pid (\d+)$',
                            log.read_text(), re.M).group(1))
        from submitit import JobEnvironment
        os.kill(pid, JobEnvironment._usr_sig())
        code = proc.wait(timeout=300)
        assert code == 0, (tmp_path / 'sweep.out').read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    text = log.read_text()
    # The training stopped where it resumes, the job was requeued and the
    # new job resumed the chain.
    assert re.search(r'SIGUSR1: stopped .* exiting with code 75', text)
    commands = re.findall(r'^\$ .*$', text, re.M)
    assert len(commands) == 2
    assert '--resume' not in commands[0] and '--resume' in commands[1]
    with open(work_dir / name / 'generations.json') as f:
        records = json.load(f)
    assert [r['generation'] for r in records] == [0, 1]
    with open(work_dir / 'sweep.json') as f:
        rows = json.load(f)['runs']
    assert [r['final_top1'] for r in rows] == [records[-1]['top1']]
    printed = (tmp_path / 'sweep.out').read_text()
    assert f'{name} done in' in printed
    assert any('Requeued job' in p.read_text()
               for p in (work_dir / 'submitit').glob('*_log.out'))
