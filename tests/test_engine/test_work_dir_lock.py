"""One run at a time in a chain's work_dir: a second run is refused with
the holder's name before it looks at anything; a dead holder never blocks."""
import json
import os
import signal
import socket
import subprocess
import textwrap
import time

import pytest

from conftest import REPO, chain_cfg
from mmtolerant.engine.runner import GenerationRunner
from mmtolerant.utils.work_dir_lock import WorkDirInUse, WorkDirLock

HOLDER = rf'host {socket.gethostname()}, pid {{pid}}, started \S+'


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with WorkDirLock(str(tmp_path / 'chain.lock')):
        with pytest.raises(WorkDirInUse,
                           match=HOLDER.format(pid=os.getpid())):
            WorkDirLock(str(tmp_path / 'chain.lock')).acquire()
    # released: free again
    with WorkDirLock(str(tmp_path / 'chain.lock')) as lock:
        assert lock.held


def test_a_refusal_waits_for_a_new_holder_to_write_its_name(tmp_path):
    """The holder writes its name just after taking the lock: a second run
    that comes in between waits for the name instead of reporting none."""
    import fcntl
    import threading
    path = str(tmp_path / 'chain.lock')
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, no name yet
    name = json.dumps(dict(host='node7', pid=4242, started='now',
                           command='train'))
    writer = threading.Timer(0.3, os.write, (fd, name.encode()))
    writer.start()
    try:
        with pytest.raises(WorkDirInUse, match='host node7, pid 4242,'):
            WorkDirLock(path).acquire()
    finally:
        writer.join()
        os.close(fd)


def test_a_chain_in_a_locked_work_dir_is_refused_before_it_looks(tmp_path):
    with WorkDirLock(str(tmp_path / 'chain.lock')):
        with pytest.raises(WorkDirInUse, match='use another --work-dir'):
            GenerationRunner(chain_cfg(tmp_path)).train()
    assert sorted(os.listdir(tmp_path)) == ['chain.lock']


def test_a_failed_run_releases_its_lock(tmp_path):
    runner = GenerationRunner(chain_cfg(tmp_path))
    os.makedirs(tmp_path / 'gen_0')  # refused without --resume
    with pytest.raises(ValueError, match='Pass --resume'):
        runner.train()
    with WorkDirLock(str(tmp_path / 'chain.lock')) as lock:
        assert lock.held


def test_the_lock_of_a_killed_process_does_not_block(tmp_path, python):
    path = str(tmp_path / 'chain.lock')
    holder = subprocess.Popen(
        [python, '-c', textwrap.dedent(f'''
            import time
            from mmtolerant.utils.work_dir_lock import WorkDirLock
            WorkDirLock({path!r}).acquire()
            print('locked', flush=True)
            time.sleep(600)
        ''')], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(WorkDirInUse, match=f'pid {holder.pid},'):
        WorkDirLock(path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with WorkDirLock(path) as lock:
        assert lock.held


@pytest.mark.slow
@pytest.mark.parametrize('resume', [False, True])
def test_two_runs_released_together_one_trains_the_other_is_refused(
        tmp_path, python, resume):
    """Two processes held at a barrier, then started together on one
    work_dir (two fresh runs; or two --resume runs with other settings):
    exactly one trains, the other stops naming it."""
    work_dir = tmp_path / 'chain'
    barrier = tmp_path / 'go'
    script = tmp_path / 'run.py'
    script.write_text(textwrap.dedent(f'''
        import os, sys, time
        sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from conftest import chain_cfg
        from mmtolerant.engine.runner import GenerationRunner
        cfg = chain_cfg({str(work_dir)!r}, **{{
            'generations.num_generations': 1,
            'generations.lam': float(sys.argv[1]), 'resume': {resume}}})
        runner = GenerationRunner(cfg)
        open(sys.argv[2], 'w').close()  # ready
        while not os.path.exists({str(barrier)!r}):
            time.sleep(0.01)
        runner.train()
    '''))
    procs = [
        subprocess.Popen([python, str(script), lam,
                          str(tmp_path / f'ready{i}')],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=REPO)
        for i, lam in enumerate(('0.5', '0.9'))
    ]
    deadline = time.time() + 300
    while not all((tmp_path / f'ready{i}').exists() for i in (0, 1)):
        assert time.time() < deadline and all(
            p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    barrier.touch()
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert f'pid {procs[winner].pid},' in outputs[loser]
    assert 'is in use by another run' in outputs[loser]
    # The chain is the winner's alone: its lam in the record and the
    # students' configs.
    lam = (0.5, 0.9)[winner]
    with open(work_dir / 'chain.json') as f:
        assert json.load(f)['generations']['1']['model']['lam'] == lam
    dumped = next((work_dir / 'gen_1').glob('*.py')).read_text()
    assert f'lam={lam}' in dumped


def test_a_read_only_work_dir_is_named(tmp_path, monkeypatch):
    # (root ignores file modes: the refusal of the system call is
    # simulated)
    def refuse(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')

    monkeypatch.setattr(os, 'open', refuse)
    with pytest.raises(PermissionError, match=rf'{tmp_path} is not writable '
                       r'\(Permission denied\).*another --work-dir'):
        WorkDirLock(str(tmp_path / 'chain.lock')).acquire()
