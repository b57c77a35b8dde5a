"""A chain's work_dir across runs: refusals that keep results apart,
resume of finished and killed chains."""
import json
import os
import re
import shutil
import textwrap

import pytest

from conftest import (CHAIN, REPO, assert_same_weights, chain_cfg,
                      config_with_hook, run_tool, weights)
from mmtolerant.engine.runner import GenerationRunner
from mmtolerant.engine.runner.chain_plan import plan_chain


def test_existing_chain_is_never_overwritten_without_resume(chain, tmp_path):
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    before = (copy / 'gen_0' / 'exported_model.pth').read_bytes()
    with pytest.raises(ValueError, match='Pass --resume'):
        GenerationRunner.from_cfg(chain_cfg(copy)).train()
    assert (copy / 'gen_0' / 'exported_model.pth').read_bytes() == before


def test_resume_into_a_work_dir_of_another_config_is_refused(chain, tmp_path):
    """The refusal names the first generation it would keep under other
    settings, and the setting, with both values."""
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob('*.pth')}
    cfg = chain_cfg(copy, **{'generations.lam': 0.9, 'resume': True})
    with pytest.raises(ValueError, match=(
            r'generation 1 \(finished\) was trained under other settings '
            r'than this config gives it: model\.lam: 0\.5 recorded, 0\.9 '
            'now')):
        GenerationRunner.from_cfg(cfg).train()
    cfg = chain_cfg(copy, **{'generations.teacher_loss.eta': 0.6,
                             'resume': True})
    with pytest.raises(ValueError, match=(
            r'generation 0 \(finished\).*model\.head\.loss\.eta: 0\.7 '
            r'recorded, 0\.6 now')):
        GenerationRunner.from_cfg(cfg).train()
    # The batch size is what the generation trained on; EMA changes the
    # weights it hands on.
    for option, match in (
            ({'train_dataloader.batch_size': 32},
             r'generation 0 \(finished\).*train_dataloader\.batch_size: 64 '
             'recorded, 32 now'),
            ({'custom_hooks': [dict(type='EMAHook')]},
             r"generation 0 \(finished\).*ema_hooks: \[\] recorded, "
             r"\[\{'type': 'EMAHook'\}\] now")):
        with pytest.raises(ValueError, match=match):
            GenerationRunner.from_cfg(chain_cfg(copy, resume=True,
                                                **option)).train()
    assert {p: p.stat().st_mtime_ns for p in copy.rglob('*.pth')} == stamps


@pytest.mark.slow
def test_generations_not_started_may_change_on_resume(chain, tmp_path):
    """M0 finished, M1 and M2 not started (say the user removed a setting
    that failed in M1 before its first checkpoint): the resume keeps M0 and
    trains M1 and M2 under the new settings, recorded for the next
    resume."""
    import json
    work_dir, records = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    shutil.rmtree(copy / 'gen_2')
    for path in (copy / 'gen_1').glob('*.pth'):  # left: its logs
        path.unlink()
    (copy / 'gen_1' / 'generation.json').unlink()
    m0 = (copy / 'gen_0' / 'exported_model.pth').stat().st_mtime_ns
    again = GenerationRunner.from_cfg(chain_cfg(copy, resume=True, **{
        'generations.lam': 0.9})).train()
    assert again[0] == records[0]
    assert (copy / 'gen_0' / 'exported_model.pth').stat().st_mtime_ns == m0
    assert [r['generation'] for r in again] == [0, 1, 2]
    saved = json.loads((copy / 'chain.json').read_text())
    assert [saved['generations'][m]['model'].get('lam')
            for m in '012'] == [None, 0.9, 0.9]
    # The settings it was trained under now stand for generation 1.
    with pytest.raises(ValueError, match=r'generation 1 \(finished\).*'
                       r'model\.lam: 0\.9 recorded, 0\.5 now'):
        GenerationRunner.from_cfg(chain_cfg(copy, resume=True)).train()


def test_a_started_generation_under_other_settings_is_refused(chain,
                                                               tmp_path):
    """M1 has a checkpoint to resume from: continuing it under other
    settings would mix two trainings; the error says how to restart it."""
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    shutil.rmtree(copy / 'gen_2')
    (copy / 'gen_1' / 'generation.json').unlink()
    cfg = chain_cfg(copy, resume=True, **{'generations.lam': 0.9})
    with pytest.raises(ValueError, match=(
            r'generation 1 \(started\).*model\.lam: 0\.5 recorded, 0\.9 now'
            r'\. To train generation 1 anew under these settings, delete '
            f'{copy}/gen_1;')):
        GenerationRunner.from_cfg(cfg).train()
    assert (copy / 'gen_1' / 'epoch_1.pth').is_file()


def test_extending_a_tolerant_all_chain_is_refused_with_the_reason(tmp_path):
    """With tolerant='all' the last generation trains without TSD (it
    teaches nobody); a longer chain would need it tolerant."""
    options = {'generations.tolerant': 'all'}
    work_dir = tmp_path / 'wd'
    first = GenerationRunner.from_cfg(chain_cfg(work_dir, **options))
    plan_chain(first.layout, first.generation_cfgs, first.settings,
               resume=False, config=CHAIN)  # records the chain
    for m in range(3):  # as if M0..M2 had finished
        (work_dir / f'gen_{m}').mkdir()
        (work_dir / f'gen_{m}' / 'generation.json').write_text('{}')
    longer = GenerationRunner.from_cfg(chain_cfg(work_dir, resume=True, **{
        'generations.num_generations': 3, **options}))
    with pytest.raises(ValueError, match=(
            r"generation 2 \(finished\).*with tolerant='all' the chain's "
            r"last generation is not tolerant.*model\.head\.loss: "
            r"CrossEntropyLoss\(loss_weight=1\.0\) recorded, "
            r"TSDLoss\(eta=0\.7, k=3, num_classes=10\) now")):
        longer.train()


@pytest.mark.parametrize('text, why', [
    ('{"config": "c.py", "fingerprint": {"model": "0123"}}',
     'no per-generation records'),
    ('{"generations": {', 'invalid JSON'),
])
def test_a_chain_record_that_cannot_be_compared_is_refused(
        chain, tmp_path, text, why):
    """Without its per-generation records the settings a work_dir's
    generations were trained under are unknown: refused, naming the file,
    rather than resumed unchecked."""
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    (copy / 'chain.json').write_text(text)
    with pytest.raises(ValueError, match=re.escape(
            f'{copy}/chain.json is not a chain record of this version of '
            f'mmtolerant ({why}')):
        GenerationRunner.from_cfg(chain_cfg(copy, resume=True)).train()


def test_missing_teacher_checkpoint_stops_before_training(chain, tmp_path):
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    shutil.rmtree(copy / 'gen_2')
    (copy / 'gen_1' / 'exported_model.pth').unlink()
    cfg = chain_cfg(copy, resume=True)
    with pytest.raises(ValueError, match=r'generation 2 cannot start: its '
                       r'teacher .*gen_1/exported_model.pth cannot be read '
                       r'.*does not exist.*To export generation 1 again'):
        GenerationRunner.from_cfg(cfg).train()
    assert not (copy / 'gen_2').exists()


def test_resume_of_a_finished_chain_retrains_nothing(chain, tmp_path):
    work_dir, records = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob('*.pth')}
    # Speed-only settings, dataloader workers and where the data lies may
    # change between a run and its resume.
    again = GenerationRunner.from_cfg(chain_cfg(copy, resume=True, **{
        'generations.teacher_compile': True,
        'generations.teacher_channels_last': False,
        'train_dataloader.num_workers': 1,
        'train_dataloader.dataset.data_root': '/moved/data'})).train()
    assert again == records
    assert {p: p.stat().st_mtime_ns for p in copy.rglob('*.pth')} == stamps


def test_shrinking_a_finished_chain_is_refused(chain, tmp_path):
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    cfg = chain_cfg(copy, **{
        'generations.num_generations': 1,
        'resume': True
    })
    with pytest.raises(ValueError, match=r'generations \[2\] beyond'):
        GenerationRunner.from_cfg(cfg).train()


KILLER = textwrap.dedent("""
    import os
    import os.path as osp
    import signal

    from mmengine.hooks import Hook
    from mmpretrain.registry import HOOKS

    WHERE = os.environ.get('KILL_AT', '')


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    if WHERE == 'while_writing_checkpoint':
        # Kill once generation 1's epoch-2 checkpoint is fully written to
        # its temporary file but not yet renamed into place.
        _replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if dst.endswith(osp.join('gen_1', 'epoch_2.pth')):
                die()
            return _replace(src, dst, *args, **kwargs)

        os.replace = replace


    @HOOKS.register_module()
    class KillHook(Hook):
        priority = 'LOWEST'  # after CheckpointHook

        def _gen(self, runner):
            return osp.basename(runner.work_dir)

        def before_train(self, runner):
            if WHERE == 'between_generations' and self._gen(runner) == 'gen_1':
                die()

        def after_train_epoch(self, runner):
            if WHERE == 'between_epochs' and self._gen(runner) == 'gen_1' \\
                    and runner.epoch == 0:
                die()

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            if WHERE == 'mid_epoch' and self._gen(runner) == 'gen_1' \\
                    and runner.epoch == 1 and batch_idx == 5:
                die()
""")


RESUME_OPTIONS = [
    '--cfg-options', 'train_cfg.max_epochs=2',
    'generations.num_generations=2', 'randomness.deterministic=True'
]


def run_chain(config, work_dir, python, extra_env=None, resume=False,
              expect=0, options=()):
    env = {'OMP_NUM_THREADS': '1', 'PYTHONPATH': REPO}
    env.update(extra_env or {})
    args = [python, 'tools/train.py', str(config), '--work-dir', str(work_dir)]
    if resume:
        args.append('--resume')
    return run_tool(args + RESUME_OPTIONS + list(options), env=env,
                    expect=expect)


def chain_result(work_dir):
    with open(work_dir / 'generations.json') as f:
        records = json.load(f)
    for r in records:  # timings differ from run to run
        for key in ('wall_time_s', 'build_time_s', 'finish_time_s',
                    'finish_parts_s'):
            r.pop(key)
        # A run resumed after its final validation predicts the test set
        # again (the same numbers, checked by the equality below).
        r.pop('test_predictions_from')
    exported = [
        weights(work_dir / f'gen_{m}' / 'exported_model.pth')
        for m in range(3)
    ]
    return records, exported


def assert_same_chain(work_dir, reference):
    """The chain in work_dir has the records and exports of
    ``reference`` (a :func:`chain_result`)."""
    records, exported = chain_result(work_dir)
    ref_records, ref_exported = reference
    assert records == ref_records
    for ours, ref in zip(exported, ref_exported):
        assert_same_weights(ours, ref)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, python_exe=None):
    import sys
    work_dir = tmp_path_factory.mktemp('uninterrupted')
    run_chain(CHAIN, work_dir, sys.executable)
    return chain_result(work_dir)


@pytest.mark.slow
@pytest.mark.parametrize('kill_at', [
    'between_generations', 'between_epochs', 'mid_epoch',
    'while_writing_checkpoint'
])
def test_chain_killed_anywhere_resumes_to_the_same_result(
        uninterrupted, tmp_path, python, kill_at):
    killing = config_with_hook(tmp_path, CHAIN, KILLER,
                               "dict(type='KillHook')")
    work_dir = tmp_path / 'chain'
    env = {'KILL_AT': kill_at, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'}
    run_chain(killing, work_dir, python, env, expect=-9)
    assert (work_dir / 'gen_0' / 'generation.json').is_file()
    assert not (work_dir / 'gen_1' / 'generation.json').exists()
    finished = {
        p: p.stat().st_mtime_ns
        for p in (work_dir / 'gen_0').iterdir()
    }

    resumed = run_chain(CHAIN, work_dir, python, resume=True)
    log = resumed.stdout + resumed.stderr
    assert 'generation 0/2 is finished' in log and 'not retrained' in log
    if kill_at != 'between_generations':
        assert re.search(r'generation 1: resuming from .*epoch_1\.pth', log)
    # The finished generation was not touched.
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert not list(work_dir.rglob('*.tmp-*'))

    assert_same_chain(work_dir, uninterrupted)


SIGNALLER = textwrap.dedent("""
    import os
    import os.path as osp
    import signal

    from mmengine.hooks import Hook
    from mmpretrain.registry import HOOKS

    WHERE = os.environ.get('SIGNAL_AT', '')


    @HOOKS.register_module()
    class SignalHook(Hook):
        # What SLURM's --signal=USR1@T does before a time limit.
        priority = 'LOWEST'

        def _gen(self, runner):
            return osp.basename(runner.work_dir)

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            if self._gen(runner) == 'gen_1' and runner.epoch == 1 and (
                    WHERE == 'mid_epoch' and batch_idx == 4
                    or WHERE == 'last_batch' and batch_idx == 20):
                os.kill(os.getpid(), signal.SIGUSR1)

        def after_train(self, runner):
            if WHERE == 'between_generations' and \\
                    self._gen(runner) == 'gen_0':
                os.kill(os.getpid(), signal.SIGUSR1)
""")


@pytest.mark.slow
@pytest.mark.parametrize('signal_at',
                         ['mid_epoch', 'last_batch', 'between_generations'])
def test_a_signalled_chain_stops_for_requeue_and_resumes_to_the_same_result(
        uninterrupted, tmp_path, python, signal_at):
    """SIGUSR1 (SLURM's warning before a time limit): the run stops at the
    next iteration boundary with a checkpoint there, or between
    generations, and exits 75; the resumed run continues at the next batch
    and ends equal to an uninterrupted run."""
    signalling = config_with_hook(tmp_path, CHAIN, SIGNALLER,
                                  "dict(type='SignalHook')")
    work_dir = tmp_path / 'chain'
    env = {'SIGNAL_AT': signal_at,
           'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'}
    stopped = run_chain(signalling, work_dir, python, env, expect=75)
    assert (work_dir / 'gen_0' / 'generation.json').is_file()
    assert not (work_dir / 'gen_1' / 'generation.json').exists()
    # 21 batches per epoch: epoch 2 stopped after its 5th or 21st batch.
    batch = {'mid_epoch': 5, 'last_batch': 21}.get(signal_at)
    if batch:
        assert f'SIGUSR1: stopped at epoch 2, batch {batch}/21' in stopped.log
        checkpoint = work_dir / 'gen_1' / f'iter_{21 + batch}.pth'
        assert checkpoint.is_file()
        assert (work_dir / 'gen_1' / 'last_checkpoint').read_text() == \
            str(checkpoint)
    else:
        assert 'SIGUSR1: stopped before generation 1' in stopped.log
        assert not (work_dir / 'gen_1').exists()

    resumed = run_chain(CHAIN, work_dir, python, resume=True)
    if batch:
        assert re.search(
            rf'generation 1: resuming from .*iter_{21 + batch}\.pth',
            resumed.log)
        assert ('continuing at batch 6' if batch == 5 else
                'ending the epoch') in resumed.log
        # Superseded by the epoch's own checkpoint.
        assert not checkpoint.exists()
    assert_same_chain(work_dir, uninterrupted)


@pytest.mark.slow
def test_stop_after_trains_a_chain_generation_by_generation(
        uninterrupted, tmp_path, python):
    work_dir = tmp_path / 'chain'
    first = run_chain(CHAIN, work_dir, python,
                      options=['generations.stop_after=1'])
    assert 'stopped after generation 1 as generations.stop_after asks' \
        in first.log
    with open(work_dir / 'generations.json') as f:
        assert [r['generation'] for r in json.load(f)] == [0, 1]
    assert not (work_dir / 'gen_2').exists()
    run_chain(CHAIN, work_dir, python, resume=True)
    assert_same_chain(work_dir, uninterrupted)


def test_a_resume_clears_half_written_files_of_the_killed_run(chain,
                                                              tmp_path):
    """A kill while the report's plot was drawn beside the next generation,
    or while a checkpoint was written, leaves a temporary file: never read,
    and removed when the chain resumes."""
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    (copy / 'gen_2' / 'generation.json').unlink()
    stale = [copy / 'generations.png.tmp-999999.png',
             copy / 'gen_2' / 'epoch_2.pth.tmp-999999']
    for path in stale:
        path.write_bytes(b'half')
    runner = GenerationRunner.from_cfg(chain_cfg(copy, resume=True))
    plan = plan_chain(runner.layout, runner.generation_cfgs, runner.settings,
                      resume=True, config=CHAIN)
    assert plan.finished == [0, 1]
    assert not any(path.exists() for path in stale)


def test_a_resume_without_the_chain_record_is_refused(chain, tmp_path):
    """Deleting chain.json (the obvious fix of a refused resume) must not
    switch the settings check off."""
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    (copy / 'chain.json').unlink()
    cfg = chain_cfg(copy, resume=True, **{'generations.lam': 0.9})
    with pytest.raises(ValueError, match=r'holds started generations '
                       r'\[0, 1, 2\] but no chain.json.*Restore'):
        GenerationRunner.from_cfg(cfg).train()
    assert not (copy / 'chain.json').exists()


@pytest.mark.parametrize('name, content, error', [
    ('generation.json', b'{"generation": 1, "top', 'JSONDecodeError'),
    ('generation.json', b'[]', 'not a generation record'),
    ('test_predictions.npz', b'PK\x03\x04 truncated', 'BadZipFile'),
    # an .npz holding a pickled object array: never unpickled
    ('test_predictions.npz', None, 'allow_pickle=False'),
])
def test_a_damaged_file_of_a_finished_generation_is_named_before_training(
        chain, tmp_path, name, content, error):
    import numpy as np
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    path = copy / 'gen_1' / name
    if content is None:
        np.savez(path, scores=np.array([object()]), labels=np.zeros(1))
    else:
        path.write_bytes(content)
    # one more generation to train after the damaged one
    cfg = chain_cfg(copy, resume=True,
                    **{'generations.num_generations': 3})
    with pytest.raises(ValueError, match=rf'generation 1 is finished but .*'
                       rf'{re.escape(str(path))}.*{error}.*'
                       r'pass --resume to train them again'):
        GenerationRunner.from_cfg(cfg).train()
    assert not (copy / 'gen_3').exists()


def test_each_student_records_the_teacher_export_it_trains_under(chain):
    import hashlib
    work_dir, _ = chain
    for m in (1, 2):
        with open(work_dir / f'gen_{m}' / 'teacher.json') as f:
            recorded = json.load(f)
        teacher = work_dir / f'gen_{m - 1}' / 'exported_model.pth'
        assert recorded == dict(teachers=[dict(
            teacher=str(teacher),
            sha256=hashlib.sha256(teacher.read_bytes()).hexdigest())])
    assert not (work_dir / 'gen_0' / 'teacher.json').exists()


@pytest.mark.parametrize('finished', [True, False])
def test_a_generation_of_another_teacher_is_refused(chain, tmp_path,
                                                    finished):
    """gen_1's export replaced by hand: gen_2 (finished, or killed with a
    checkpoint) was trained under the old one."""
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy, symlinks=True)
    shutil.copy(copy / 'gen_0' / 'exported_model.pth',
                copy / 'gen_1' / 'exported_model.pth')
    if not finished:
        (copy / 'gen_2' / 'generation.json').unlink()
    state = 'finished' if finished else 'started'
    with pytest.raises(ValueError, match=rf'generation 2 \({state}\) was '
                       r'trained under the teacher .*gen_1/exported_model'
                       r'.pth with sha256 \w{12}\.\.\., but that file is now'
                       r' \w{12}: .*Delete .*gen_2'):
        GenerationRunner.from_cfg(chain_cfg(copy, resume=True)).train()


def test_checkpoints_beyond_a_generation_that_trains_again_are_refused(
        chain, tmp_path):
    """The issue's case: gen_1 deleted (to retrain it) while gen_2 holds
    checkpoints of the old gen_1's student."""
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    (copy / 'gen_2' / 'generation.json').unlink()
    shutil.rmtree(copy / 'gen_1')
    with pytest.raises(ValueError, match=r'generations \[2\] hold '
                       r'checkpoints, but generation 1 before them is not '
                       r'finished and will train again.*Delete .*gen_2'):
        GenerationRunner.from_cfg(chain_cfg(copy, resume=True)).train()
    assert not (copy / 'gen_1').exists()


@pytest.mark.slow
def test_a_damaged_teacher_export_is_made_again_by_following_the_remedy(
        chain, tmp_path):
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    shutil.rmtree(copy / 'gen_2')
    (copy / 'gen_1' / 'exported_model.pth').write_bytes(b'PK\x03\x04 cut')
    cfg = chain_cfg(copy, resume=True)
    with pytest.raises(ValueError, match=r'generation 2 cannot start: its '
                       r'teacher .*gen_1/exported_model.pth cannot be read.*'
                       r'delete .*gen_1/generation.json .*--resume'):
        GenerationRunner.from_cfg(cfg).train()
    # The remedy: generation 1 finishes again from its last checkpoint,
    # without training, and the chain goes on.
    (copy / 'gen_1' / 'generation.json').unlink()
    records = GenerationRunner.from_cfg(chain_cfg(copy, resume=True)).train()
    assert [r['generation'] for r in records] == [0, 1, 2]
    assert_same_weights(weights(copy / 'gen_1' / 'exported_model.pth'),
                        weights(work_dir / 'gen_1' / 'exported_model.pth'))


def test_a_lost_record_of_a_teacher_says_how_to_recover(chain, tmp_path):
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    (copy / 'gen_0' / 'generation.json').unlink()
    with pytest.raises(ValueError, match=r'generation 1 is finished but its '
                       r'teacher, generation 0, is not \(.*gen_0/generation'
                       r'.json is missing\).*Restore that file, or delete'):
        GenerationRunner.from_cfg(chain_cfg(copy, resume=True)).train()


CHAOS_KILLER = textwrap.dedent("""
    import os
    import signal

    from mmengine.hooks import Hook
    from mmpretrain.registry import HOOKS

    AFTER = int(os.environ.get('KILL_AFTER_ITERS', '0'))
    POINT = os.environ.get('KILL_POINT', 'iter')


    @HOOKS.register_module()
    class ChaosKillHook(Hook):
        # Counts this process's training steps over all its generations.
        priority = 'LOWEST'  # after CheckpointHook
        steps = 0

        def _tick(self, point):
            if point == 'iter':
                ChaosKillHook.steps += 1
            if AFTER and ChaosKillHook.steps >= AFTER and point == POINT:
                os.kill(os.getpid(), signal.SIGKILL)

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            self._tick('iter')

        def after_train_epoch(self, runner):
            self._tick('epoch')

        def after_run(self, runner):
            self._tick('run')
""")


@pytest.mark.slow
def test_a_chain_killed_at_ten_random_moments_ends_bit_identical(
        uninterrupted, tmp_path, python):
    """Seeded chaos: SIGKILL after a random number of training steps, at a
    random point (mid-epoch, at an epoch's end after its checkpoint, at the
    end of a generation's run), ten times; then resumed to the end. The
    chain's records and every export equal an uninterrupted run's."""
    import random
    rng = random.Random(0)
    killing = config_with_hook(tmp_path, CHAIN, CHAOS_KILLER,
                               "dict(type='ChaosKillHook')")
    work_dir = tmp_path / 'chain'
    # Mostly mid-epoch (the run resumes from the epoch before), twice at an
    # epoch's end, once at a generation's end: the chain is not finished
    # when the last kill lands.
    points = ['iter'] * 7 + ['epoch'] * 2 + ['run']
    rng.shuffle(points)
    for kill, point in enumerate(points):
        env = {'KILL_AFTER_ITERS': str(rng.randint(1, 20)),
               'KILL_POINT': point,
               'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'}
        proc = run_chain(killing, work_dir, python, env, resume=kill > 0,
                         expect=None)
        assert proc.returncode == -9, proc.log[-3000:]
    assert not (work_dir / 'gen_2' / 'generation.json').exists()
    run_chain(CHAIN, work_dir, python, resume=True)
    assert not list(work_dir.rglob('*.tmp-*'))
    assert_same_chain(work_dir, uninterrupted)


def test_a_finished_chain_in_a_read_only_work_dir_is_reported(
        chain, tmp_path, monkeypatch):
    work_dir, records = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    (copy / 'chain.lock').unlink()
    before = {p: p.stat().st_mtime_ns for p in copy.rglob('*')}
    # (root ignores file modes: read-only is what os.access says)
    access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: False if str(
        path) == str(copy) else access(path, mode))
    again = GenerationRunner.from_cfg(chain_cfg(copy, resume=True)).train()
    assert [r['top1'] for r in again] == [r['top1'] for r in records]
    assert {p: p.stat().st_mtime_ns for p in copy.rglob('*')} == before
