"""Snapshot generations: generations inside one run of MMEngine's real
Runner (digits, 3 cycles of 2 epochs), reported like a chain, resumable
mid-cycle with the cycle's teacher."""
import json
import os
import signal

import numpy as np
import pytest
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS, MODELS

from conftest import (assert_same_weights, digits_batch, digits_cfg,
                      exported_model_probs, train, weights)
from mmtolerant.evaluation.generation_report import (load_predictions,
                                                     topk_accuracy)
from mmtolerant.utils import safe_torch_load
from mmtolerant.utils.preemption import Requeue

CONFIG = 'snapshot-tsd_resnet18-w8_1xb64_digits.py'
ITERS_PER_EPOCH = 1347 // 64  # drop_last


def snapshot_cfg(work_dir, num_cycles=3, cycle_epochs=2, **options):
    cfg = digits_cfg(CONFIG, work_dir)
    cfg.train_cfg.max_epochs = num_cycles * cycle_epochs
    cfg.train_cfg.val_interval = cycle_epochs
    cfg.param_scheduler.periods = [cycle_epochs] * num_cycles
    cfg.param_scheduler.restart_weights = [1] * num_cycles
    cfg.custom_hooks[0].num_cycles = num_cycles
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.logger.interval = 1
    cfg.randomness.deterministic = True
    cfg.merge_from_dict(options)
    return cfg


@pytest.fixture(scope='module')
def snapshot_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('snapshot')
    runner = train(snapshot_cfg(work_dir))
    return work_dir, runner


def _records(work_dir):
    with open(work_dir / 'generations.json') as f:
        return json.load(f)


def _logged(work_dir):
    """The training log lines of the run (LoggerHook's scalars.json)."""
    [path] = work_dir.glob('*/vis_data/scalars.json')
    with open(path) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def test_each_cycle_is_reported_and_exported_as_a_generation(snapshot_run):
    work_dir, _ = snapshot_run
    records = _records(work_dir)
    assert [r['generation'] for r in records] == [0, 1, 2]
    with open(work_dir / 'chain.json') as f:
        chain = json.load(f)
    assert chain['kind'] == 'snapshot' and chain['num_generations'] == 2
    assert chain['cycle_epochs'] == 2
    assert 'TSDLoss' in records[0]['trained_with']
    assert 'snapshot of cycle 0' in records[1]['trained_with']
    for r in records:
        c = r['generation']
        # The export, loaded by stock mmpretrain, predicts what was saved
        # and reported.
        probs, labels = (t.numpy() for t in exported_model_probs(
            work_dir / f'gen_{c}', 'test'))
        saved, saved_labels = load_predictions(
            str(work_dir / f'gen_{c}' / 'test_predictions.npz'))
        np.testing.assert_array_equal(labels, saved_labels)
        np.testing.assert_allclose(probs, saved, atol=1e-5)
        assert r['top1'] == pytest.approx(topk_accuracy(saved, labels, 1))
        assert r['epochs'] == 2 * (c + 1)
        if c:
            assert r['teacher_top1'] == records[c - 1]['top1']
    # The ensemble of cycles 1..2 averages their predictions.
    p1, p2 = (load_predictions(str(work_dir / f'gen_{c}' /
                                   'test_predictions.npz'))[0]
              for c in (1, 2))
    assert records[2]['ensemble_top1'] == pytest.approx(
        topk_accuracy((p1 + p2) / 2, labels, 1))
    assert (work_dir / 'generations.md').is_file()
    assert (work_dir / 'generations.png').is_file()


def test_cycle_zero_trains_with_tsd_and_later_cycles_with_the_snapshot(
        snapshot_run):
    work_dir, runner = snapshot_run
    lines = _logged(work_dir)
    boundary = 2 * ITERS_PER_EPOCH  # the end of cycle 0
    first = [line for line in lines if line['step'] <= boundary]
    later = [line for line in lines if line['step'] > boundary]
    assert first and later
    assert all('loss_tsd_term' in line and 'loss_kd' not in line
               for line in first)
    assert all('loss_kd' in line and 'loss_tsd_term' not in line
               for line in later)
    model = runner.model
    assert type(model.head.loss_module).__name__ == 'CrossEntropyLoss'
    # The last cycle's teacher is cycle 1's model, frozen, outside the
    # student's state dict.
    assert_same_weights(model.teacher.state_dict(),
                        weights(work_dir / 'gen_1' / 'exported_model.pth'))
    assert not model.teacher.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert not any(k.startswith('teacher') for k in model.state_dict())
    # Checkpoints carry the cycle's teacher: epoch 5 is in cycle 2.
    saved = safe_torch_load(str(work_dir / 'epoch_5.pth'))  # weights-only
    entry = saved['snapshot_generations']
    assert entry['teacher_cycle'] == 2
    assert_same_weights(entry['teacher_state'],
                        weights(work_dir / 'gen_1' / 'exported_model.pth'))


@HOOKS.register_module()
class _SignalAt(Hook):
    """Sends SIGUSR1 (SLURM's warning before a time limit) after one
    iteration."""
    priority = 'LOWEST'

    def __init__(self, iteration):
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
@pytest.mark.parametrize('stop_at', ['mid_cycle', 'cycle_end'])
def test_a_run_stopped_mid_cycle_resumes_to_the_same_result(
        snapshot_run, tmp_path, stop_at):
    """SIGUSR1 in cycle 1 (a stop after epoch 3's batch 5: the teacher
    comes from the checkpoint), or at cycle 0's last batch (a stop before
    the cycle's end is reported): the resumed run ends with the
    uninterrupted run's weights, teachers and report."""
    reference, _ = snapshot_run
    # The stop comes at the next iteration boundary that PreemptionHook
    # checks: one iteration after the signal here.
    stop = {'mid_cycle': 2 * ITERS_PER_EPOCH + 5,
            'cycle_end': 2 * ITERS_PER_EPOCH}[stop_at]
    cfg = snapshot_cfg(tmp_path)
    cfg.custom_hooks.append(dict(type='_SignalAt', iteration=stop - 1))
    with pytest.raises(Requeue):
        train(cfg)
    assert (tmp_path / f'iter_{stop}.pth').is_file()
    # Stopped before cycle 0's end was reported, or in cycle 1.
    assert (tmp_path / 'gen_0').is_dir() == (stop_at == 'mid_cycle')
    resumed = train(snapshot_cfg(tmp_path, resume=True))
    assert resumed.iter == 6 * ITERS_PER_EPOCH
    assert_same_weights(weights(tmp_path / 'epoch_6.pth'),
                        weights(reference / 'epoch_6.pth'))
    ours, theirs = _records(tmp_path), _records(reference)
    for a, b in zip(ours, theirs):
        a.pop('wall_time_s'), b.pop('wall_time_s')
    assert ours == theirs


@pytest.mark.parametrize('change, match', [
    (dict(resume=False), 'already holds a run .*pass --resume'),
    ({'resume': True, 'custom_hooks.0.first_cycle_loss': None},
     r'first_cycle_loss: TSDLoss\(eta=0.7, k=3\) recorded, None now'),
    ({'resume': True, 'optim_wrapper.optimizer.lr': 0.1},
     r'run.optim_wrapper.optimizer.lr: 0.05 recorded, 0.1 now'),
])
def test_a_second_run_or_other_cycles_in_its_work_dir_are_refused(
        snapshot_run, tmp_path, change, match):
    import shutil
    work_dir = tmp_path / 'copy'
    shutil.copytree(snapshot_run[0], work_dir)
    before = sorted(p.name for p in work_dir.iterdir())
    with pytest.raises(ValueError, match=match):
        train(snapshot_cfg(work_dir, **change))
    assert sorted(p.name for p in work_dir.iterdir() if not p.name[
        0].isdigit()) == [n for n in before if not n[0].isdigit()]


@pytest.mark.parametrize('change, error, match', [
    ({'custom_hooks.0.num_cycles': 1}, ValueError,
     'num_cycles must be an int >= 2, got 1'),
    ({'custom_hooks.0.num_cycles': 4}, ValueError,
     'num_cycles=4 does not divide train_cfg.max_epochs=6'),
    ({'model.type': 'ImageClassifier'}, TypeError,
     "needs model.type='DistillImageClassifier', got ImageClassifier"),
    ({'custom_hooks.0.report_k': 11}, ValueError,
     'report_k=11 is larger than the 10 classes'),
])
def test_bad_snapshot_settings_are_refused_before_training(
        tmp_path, change, error, match):
    cfg = snapshot_cfg(tmp_path)
    if change.get('model.type') == 'ImageClassifier':
        for key in ('teacher', 'lam', 'distill_loss', 'eval_teacher'):
            cfg.model.pop(key)
    cfg.merge_from_dict(change)
    with pytest.raises(error, match=match):
        train(cfg)
    assert not list(tmp_path.glob('*.pth'))


def test_a_distiller_without_a_teacher_trains_on_its_heads_loss_alone(
        digits_teacher):
    cfg = snapshot_cfg('unused')
    cfg.model.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(cfg.model).eval()
    assert model.teacher is None
    data = model.data_preprocessor(digits_batch(), training=False)
    losses = model.loss(data['inputs'], data['data_samples'])
    head_only = model.head.loss(model.extract_feat(data['inputs']),
                                data['data_samples'])
    assert set(losses) == {'loss_cls'}
    assert losses['loss_cls'].item() == pytest.approx(
        head_only['loss'].item())  # full weight, not lam
    assert 'teacher_pred_score' not in model.predict(
        data['inputs'], data['data_samples'])[0]

    # A teacher given later teaches from then on (at weight 1 - lam).
    from mmtolerant.models.classifiers import FrozenTeacher

    def teacher():
        return FrozenTeacher(
            config=str(digits_teacher / 'exported_model.py'),
            checkpoint=str(digits_teacher / 'exported_model.pth'))
    model.set_teacher(teacher())
    losses = model.loss(data['inputs'], data['data_samples'])
    assert set(losses) == {'loss_cls', 'loss_kd'}
    assert losses['loss_cls'].item() == pytest.approx(
        model.lam * head_only['loss'].item())
    assert model.teacher_cache is None


def test_a_new_teacher_empties_the_teacher_cache(digits_teacher):
    from mmtolerant.models.classifiers import FrozenTeacher
    cfg = snapshot_cfg('unused', **{'model.teacher_cache': dict()})
    cfg.model.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(cfg.model).train()
    data = model.data_preprocessor(digits_batch(), training=False)
    for _ in range(2):
        model.set_teacher(FrozenTeacher(
            config=str(digits_teacher / 'exported_model.py'),
            checkpoint=str(digits_teacher / 'exported_model.pth')))
        assert len(model.teacher_cache) == 0
        model.loss(data['inputs'], data['data_samples'])
        assert len(model.teacher_cache) == 16


TEACHER_PRINTER = '''
import torch
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class TeacherSumHook(Hook):
    def after_train_epoch(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        if model.teacher is not None:
            total = sum(v.double().sum().item()
                        for v in model.teacher.state_dict().values())
            # A file per rank: two processes' output may interleave.
            with open(f'{runner.work_dir}/teacher_sums_{runner.rank}.txt',
                      'a') as f:
                f.write(f'teacher sum epoch {runner.epoch + 1} rank '
                        f'{runner.rank}: {total!r}\\n')
'''


@pytest.mark.slow
def test_snapshot_generations_under_2_process_ddp(tmp_path, python):
    """tools/dist_train.sh on 2 CPU processes: both ranks are taught by the
    same snapshot (rank 0's weights and BatchNorm statistics, which the
    export of cycle 0 holds), and the cycles are reported once."""
    import random
    import re

    from conftest import REPO, run_tool
    (tmp_path / 'test_hook.py').write_text(TEACHER_PRINTER)
    config = tmp_path / 'ddp_snapshot.py'
    config.write_text(
        f"_base_ = [{os.path.join(REPO, 'configs', 'tsd', CONFIG)!r}]\n"
        "custom_imports = dict(imports=['mmtolerant', 'test_hook'])\n"
        "custom_hooks = [\n"
        "    dict(type='SnapshotGenerationsHook', num_cycles=2,\n"
        "         first_cycle_loss=dict(type='TSDLoss', eta=0.7, k=3)),\n"
        "    dict(type='EpochSeedHook'), dict(type='PreemptionHook'),\n"
        "    dict(type='TeacherSumHook')]\n"
        "train_cfg = dict(max_epochs=4, val_interval=2)\n"
        "param_scheduler = dict(periods=[2, 2], restart_weights=[1, 1])\n")
    work_dir = tmp_path / 'run'
    proc = run_tool(
        ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir',
         str(work_dir)],
        env={'PYTHON': python, 'PORT': str(random.randint(20000, 40000)),
             'CUDA_VISIBLE_DEVICES': '',
             'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'})
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log
    sums = re.findall(r'teacher sum epoch (\d) rank (\d): (\S+)', ''.join(
        (work_dir / f'teacher_sums_{r}.txt').read_text() for r in (0, 1)))
    assert sorted((e, r) for e, r, _ in sums) == [
        ('3', '0'), ('3', '1'), ('4', '0'), ('4', '1')]
    assert len({s for _, _, s in sums}) == 1  # one teacher on both ranks
    export = weights(work_dir / 'gen_0' / 'exported_model.pth')
    assert float(sums[0][2]) == pytest.approx(
        sum(v.double().sum().item() for v in export.values()), rel=1e-12)
    assert [r['generation'] for r in _records(work_dir)] == [0, 1]
    assert log.count('[snapshot] cycle 1/1 finished') == 1


def test_a_resume_without_the_records_of_finished_cycles_is_refused(
        snapshot_run, tmp_path):
    import shutil
    work_dir = tmp_path / 'copy'
    shutil.copytree(snapshot_run[0], work_dir)
    shutil.rmtree(work_dir / 'gen_1')
    with pytest.raises(ValueError,
                       match=r'records of cycles \[1\] are missing'):
        train(snapshot_cfg(work_dir, resume=True))


def test_a_resume_from_a_checkpoint_of_another_kind_of_run_is_refused(
        digits_teacher, tmp_path):
    """A plain classifier's checkpoint (the same student weights) holds no
    cycle teacher: resuming a snapshot run from it is refused."""
    with pytest.raises(ValueError, match="not one of a snapshot run"):
        train(snapshot_cfg(tmp_path, resume=True,
                           load_from=str(digits_teacher / 'epoch_2.pth')))
    assert not (tmp_path / 'chain.json').exists()


def test_testing_a_snapshot_config_leaves_its_work_dir_alone(snapshot_run):
    """mmpretrain's test path (Runner.test with load_from) on a snapshot
    config: the export of cycle 2 tested, no lock taken, nothing written."""
    from mmengine.runner import Runner
    from mmtolerant.utils.work_dir_lock import WorkDirLock
    work_dir = snapshot_run[0]
    before = (work_dir / 'chain.json').read_text()
    cfg = snapshot_cfg(work_dir, load_from=str(work_dir / 'epoch_6.pth'))
    with WorkDirLock(str(work_dir / 'chain.lock')):  # a run holds it
        metrics = Runner.from_cfg(cfg).test()
    assert metrics['accuracy/top1'] == pytest.approx(
        _records(work_dir)[2]['top1'])
    assert (work_dir / 'chain.json').read_text() == before
