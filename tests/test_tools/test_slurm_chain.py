"""``tools/slurm_chain.sh``, the sbatch script of a long chain, run with
stand-ins for ``srun`` and ``scontrol`` (no SLURM here): 2 tasks train
over gloo through ``--launcher slurm``; SIGUSR1, what ``--signal=USR1@180``
sends before the time limit, stops both ranks at the same iteration with
a checkpoint; the script requeues the job and the requeued job finishes
the chain."""
import json
import os
import random
import re
import stat
import textwrap

import pytest

from conftest import CHAIN, REPO, config_with_hook, run_tool

# srun: every task of the step, as SLURM starts them (SLURM_PROCID, ...),
# and the step's exit code: the largest of its tasks'.
FAKE_SRUN = textwrap.dedent("""\
    #!/usr/bin/env bash
    while [[ "$1" == -* ]]; do shift; done
    pids=()
    for ((i = 0; i < ${FAKE_NTASKS}; i++)); do
        SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=${FAKE_NTASKS} \\
        SLURM_NODELIST=fakenode "$@" &
        pids+=($!)
    done
    # srun passes SIGUSR1 on to its tasks.
    trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
    rc=0
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
        wait "$pid"; code=$?
        if [ "$code" -gt "$rc" ]; then rc=$code; fi
    done
    exit $rc
""")
FAKE_SCONTROL = textwrap.dedent("""\
    #!/usr/bin/env bash
    if [ "$1" = show ]; then echo 127.0.0.1; exit 0; fi
    echo "$@" >> "$FAKE_SLURM_LOG"
""")

SIGNAL_ON_RANK_1 = textwrap.dedent("""
    import os
    import os.path as osp
    import signal

    from mmengine.hooks import Hook
    from mmpretrain.registry import HOOKS


    @HOOKS.register_module()
    class SignalRank1Hook(Hook):
        # SLURM signals every task, not at the same moment: here rank 1
        # alone, in generation 1's second epoch.
        priority = 'LOWEST'

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            if runner.rank == 1 and runner.epoch == 1 and batch_idx == 0 \\
                    and osp.basename(runner.work_dir) == 'gen_1':
                os.kill(os.getpid(), signal.SIGUSR1)
""")


def fake_slurm(folder):
    bin_dir = folder / 'bin'
    bin_dir.mkdir()
    for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.slow
def test_slurm_chain_requeues_at_the_time_limit_and_the_next_job_finishes(
        tmp_path, python):
    bin_dir = fake_slurm(tmp_path)
    config = config_with_hook(
        tmp_path, CHAIN, SIGNAL_ON_RANK_1,
        "dict(type='SignalRank1Hook'), "
        "dict(type='PreemptionHook', check_interval=3)")
    work_dir = tmp_path / 'chain'
    slurm_log = tmp_path / 'slurm.log'
    env = {
        'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
        'PYTHON': python,
        'FAKE_NTASKS': '2',
        'FAKE_SLURM_LOG': str(slurm_log),
        'SLURM_JOB_ID': '4242',
        'SLURM_SUBMIT_DIR': REPO,
        'MASTER_PORT': str(random.randint(20000, 40000)),
        'CUDA_VISIBLE_DEVICES': '',
        'OMP_NUM_THREADS': '1',
        'PYTHONPATH': str(tmp_path),
    }
    options = [
        '--cfg-options', 'train_cfg.max_epochs=2',
        'generations.num_generations=1'
    ]
    first = run_tool(['bash', 'tools/slurm_chain.sh', config, str(work_dir)]
                     + options, env=env)
    assert slurm_log.read_text().split() == ['requeue', '4242']
    assert 'requeueing job 4242' in first.log
    # Rank 1 was signalled after its 1st batch of epoch 2 (10 per rank):
    # both ranks stop after the 2nd, where they agree (every 3 iterations).
    assert 'Distributed training: True' in first.log
    stops = re.findall(r'SIGUSR1: stopped at epoch 2, batch (\d+)/10',
                       first.log)
    assert stops == ['2'], first.log[-3000:]
    assert (work_dir / 'gen_1' / 'iter_12.pth').is_file()
    assert not (work_dir / 'gen_1' / 'generation.json').exists()

    # The requeued job (same script, same arguments).
    slurm_log.unlink()
    second = run_tool(['bash', 'tools/slurm_chain.sh', config,
                       str(work_dir)] + options, env=env)
    assert not slurm_log.exists()  # finished: not requeued again
    assert re.search(r'generation 1: resuming from .*iter_12\.pth',
                     second.log)
    assert 'continuing at batch 3' in second.log
    with open(work_dir / 'generations.json') as f:
        assert [r['generation'] for r in json.load(f)] == [0, 1]
    assert not (work_dir / 'gen_1' / 'iter_12.pth').exists()


def test_slurm_chain_without_arguments_says_how_to_call_it():
    proc = run_tool(['bash', 'tools/slurm_chain.sh'], expect=2)
    assert 'usage: sbatch' in proc.log
