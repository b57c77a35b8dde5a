"""Chains of generations through the real runner: hand-over, report,
ensembles, kill-and-resume, DDP and bad input."""
import json
import os
import os.path as osp
import random
import re
import shutil
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import REPO, run_tool
from mmtolerant.engine.runner import GenerationRunner
from mmtolerant.utils import extract_state_dict, safe_torch_load

CHAIN = osp.join(REPO, 'configs', 'digits', 'tsd_chain_r18t_digits.py')


def chain_cfg(work_dir, **options):
    cfg = Config.fromfile(CHAIN)
    cfg.work_dir = str(work_dir)
    cfg.train_cfg.max_epochs = 1
    cfg.generations.num_generations = 2  # M0, M1, M2
    cfg.merge_from_dict(options)
    return cfg


def weights(path):
    return extract_state_dict(safe_torch_load(str(path)), str(path))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('chain')
    records = GenerationRunner.from_cfg(chain_cfg(work_dir)).train()
    return work_dir, records


def test_chain_trains_every_generation_with_its_role(chain):
    work_dir, records = chain
    assert [r['generation'] for r in records] == [0, 1, 2]
    for m in range(3):
        gen = work_dir / f'gen_{m}'
        for name in ('generation.json', 'exported_model.pth',
                     'exported_model.py', 'test_predictions.npz',
                     'epoch_1.pth'):
            assert (gen / name).is_file(), f'gen_{m}/{name}'
        dumped = Config.fromfile(str(next(gen.glob('*/vis_data/config.py'))))
        if m == 0:
            assert dumped.model.type == 'ImageClassifier'
            assert dumped.model.head.loss.type == 'TSDLoss'
        else:
            assert dumped.model.type == 'DistillImageClassifier'
            assert dumped.model.head.loss.type == 'CrossEntropyLoss'
            assert dumped.model.teacher.checkpoint == str(
                work_dir / f'gen_{m - 1}' / 'exported_model.pth')
    for name in ('generations.json', 'generations.md', 'generations.png'):
        assert (work_dir / name).is_file()
    with open(work_dir / 'generations.json') as f:
        assert json.load(f) == records
    md = (work_dir / 'generations.md').read_text()
    assert md.count('| M') == 3 and 'TSDLoss(eta=0.7, k=3)' in md


def test_each_teacher_is_the_previous_generations_export_bit_for_bit(chain):
    work_dir, _ = chain
    from mmpretrain.registry import MODELS
    for m in (1, 2):
        exported = weights(work_dir / f'gen_{m - 1}' / 'exported_model.pth')
        # The export is the final ('last') weights of generation m-1 ...
        assert_same_weights(
            exported, weights(work_dir / f'gen_{m - 1}' / 'epoch_1.pth'))
        # ... and generation m's teacher is built from exactly it.
        dumped = Config.fromfile(
            str(next((work_dir / f'gen_{m}').glob('*/vis_data/config.py'))))
        dumped.model.setdefault('data_preprocessor', dumped.data_preprocessor)
        student = MODELS.build(dumped.model)
        assert_same_weights(student.teacher.state_dict(), exported)


def test_report_numbers_equal_an_independent_computation(chain, python):
    work_dir, records = chain
    preds = {}
    for m in range(3):
        with np.load(work_dir / f'gen_{m}' / 'test_predictions.npz') as d:
            preds[m] = (d['scores'].astype(np.float64), d['labels'])
    labels = preds[0][1]
    assert len(labels) == 450
    for m, record in enumerate(records):
        p = preds[m][0]
        assert record['top1'] == pytest.approx(
            100 * np.mean(p.argmax(1) == labels))
        assert record['mean_top1_prob'] == pytest.approx(
            np.mean(p.max(1) / p.sum(1)), abs=1e-6)
        members = [0] if m == 0 else list(range(1, m + 1))
        mean = np.mean([preds[g][0] for g in members], axis=0)
        assert record['ensemble_top1'] == pytest.approx(
            100 * np.mean(mean.argmax(1) == labels))

    proc = run_tool([
        python, 'tools/analysis/ensemble.py',
        str(work_dir), '--sets', '1,2', '0,2', '--out',
        str(work_dir / 'ens.json')
    ])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(work_dir / 'ens.json') as f:
        rows = json.load(f)
    for row in rows:
        mean = np.mean([preds[g][0] for g in row['members']], axis=0)
        assert row['top1'] == pytest.approx(
            100 * np.mean(mean.argmax(1) == labels))


def exported_model_probs(gen_dir, split, n=None):
    """Softmax outputs and labels of ``gen_dir``'s export, loaded by stock
    mmpretrain, on the first ``n`` digits of ``split`` (all by default)."""
    from mmengine.dataset import pseudo_collate
    from mmpretrain.apis import init_model
    from mmpretrain.registry import DATASETS
    model = init_model(str(gen_dir / 'exported_model.py'),
                       str(gen_dir / 'exported_model.pth'))
    dataset = DATASETS.build(
        dict(type='SklearnDigits', split=split,
             pipeline=[dict(type='PackInputs')]))
    n = len(dataset) if n is None else n
    batch = model.data_preprocessor(
        pseudo_collate([dataset[i] for i in range(n)]), False)
    with torch.no_grad():
        probs = torch.softmax(model(batch['inputs'], mode='tensor'), 1)
    return probs, torch.cat([d.gt_label for d in batch['data_samples']])


def test_saved_predictions_are_those_of_the_exported_models(chain):
    work_dir, _ = chain
    probs, _ = exported_model_probs(work_dir / 'gen_2', 'test', 32)
    with np.load(work_dir / 'gen_2' / 'test_predictions.npz') as d:
        saved = d['scores'][:32].astype(np.float32)
    np.testing.assert_allclose(saved, probs.numpy(), atol=1e-3)


def test_test_predictions_come_from_the_final_validation_pass(chain):
    """The test set is the validation set here: each generation's saved
    predictions are those of its final validation pass, equal to a separate
    pass of the exported model over the whole test set."""
    work_dir, records = chain
    assert [r['test_predictions_from'] for r in records] == \
        ['final validation pass'] * 3
    for m in range(3):
        probs, labels = exported_model_probs(work_dir / f'gen_{m}', 'test')
        with np.load(work_dir / f'gen_{m}' / 'test_predictions.npz') as d:
            np.testing.assert_allclose(d['scores'], probs.numpy(), rtol=0,
                                       atol=1e-6)
            np.testing.assert_array_equal(d['labels'], labels.numpy())


def test_a_test_set_other_than_the_validation_set_is_predicted(tmp_path):
    cfg = chain_cfg(tmp_path, **{
        'generations.num_generations': 1,
        'test_dataloader.dataset.test_fraction': 0.4,
    })
    records = GenerationRunner.from_cfg(cfg).train()
    assert [r['test_predictions_from'] for r in records] == ['test pass'] * 2
    from mmpretrain.registry import DATASETS
    held_out = DATASETS.build(
        dict(type='SklearnDigits', split='test', test_fraction=0.4))
    assert len(held_out) > 600  # 40% of each class, not the val set's 25%
    with np.load(tmp_path / 'gen_1' / 'test_predictions.npz') as d:
        np.testing.assert_array_equal(
            d["labels"], held_out.get_gt_labels())


def test_report_train_and_a_plugin_backbone_chain(tmp_path):
    """report_train's training-set numbers equal the exported model's own
    predictions on the training split; a model made of the plugin's own
    SmallConvNet exports a config that imports mmtolerant and still loads
    with mmpretrain's init_model."""
    cfg = chain_cfg(tmp_path, **{'generations.num_generations': 1,
                                 'generations.report_train': True})
    cfg.model.backbone = dict(type='SmallConvNet', widths=(8, 16))
    cfg.model.neck = dict(type='GlobalAveragePooling')
    cfg.model.head.in_channels = 16
    records = GenerationRunner.from_cfg(cfg).train()
    gen = tmp_path / 'gen_1'
    exported = Config.fromfile(str(gen / 'exported_model.py'))
    assert exported.custom_imports.imports == ['mmtolerant']
    assert exported.model.backbone.type == 'SmallConvNet'
    # Loads with stock mmpretrain's init_model (the config imports us).
    probs, labels = exported_model_probs(gen, 'train')
    assert records[1]['train_top1'] == pytest.approx(
        100 * (probs.argmax(1) == labels).float().mean().item(), abs=1e-4)
    assert records[1]['train_mean_top1_prob'] == pytest.approx(
        probs.max(1).values.mean().item(), abs=1e-4)
    for r in records:
        assert r['build_time_s'] >= 0 and r['finish_time_s'] >= 0
        assert set(r['finish_parts_s']) == {
            'test_predictions', 'report_train', 'export', 'statistics'}
        assert sum(r['finish_parts_s'].values()) == pytest.approx(
            r['finish_time_s'], abs=0.02)
    with open(tmp_path / 'generations.md') as f:
        assert '| train top-1 | train mean top-1 prob |' in f.read()


# --- bad input stops before any training ---------------------------------


@pytest.mark.parametrize('options, match', [
    ({'generations.num_generations': 0}, 'num_generations must be'),
    ({'generations.tolerant': 'some'}, "tolerant must be one of"),
    ({'generations.lam': 2.0}, 'lam must be'),
    ({'generations.hand_on': 'first'}, 'hand_on must be'),
    ({'generations.typo': 1}, r"unknown keys \['typo'\]"),
    ({'generations.overrides': {7: {'train_cfg.max_epochs': 2}}},
     'names generation 7'),
    ({'generations.overrides': {1: {'model.head.num_classes': 5}}},
     'number of classes changes between generations'),
    # Settings of later generations are checked before M0 trains.
    ({'generations.distill_loss.tau': 0}, 'generation 1 cannot build.*tau'),
    ({'generations.distill_loss.type': 'NoSuchLoss'}, 'NoSuchLoss'),
    ({'generations.teacher_loss.k': 20}, 'k=20 is larger than num_classes=10'),
    ({'generations.report_k': 11}, 'report_k=11'),
    ({'generations.report_train': 'yes'}, 'report_train must be True or'),
    ({'generations.teacher_autocast': 'fp8'},
     "teacher_autocast must be None, 'bfloat16' or 'float16', got 'fp8'"),
    ({'generations.teacher_compile': 1},
     'teacher_compile must be True, False or a dict'),
    ({'generations.teacher_channels_last': 'yes'},
     "teacher_channels_last must be None, True or False, got 'yes'"),
    ({'generations.teacher_cache': 'yes'},
     'generations: teacher_cache must be None or a dict'),
    ({'generations.teacher_cache': {'dtype': 'int8'}},
     "generations: teacher_cache.dtype must be one of .* got 'int8'"),
])
def test_generations_section_that_makes_no_sense_is_refused(
        tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        GenerationRunner.from_cfg(chain_cfg(tmp_path / 'wd', **options))
    assert not (tmp_path / 'wd').exists()


def test_missing_generations_section_is_refused(tmp_path):
    cfg = chain_cfg(tmp_path)
    cfg.pop('generations')
    with pytest.raises(ValueError, match='no `generations` section'):
        GenerationRunner.from_cfg(cfg)


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
    GenerationRunner.from_cfg(chain_cfg(work_dir, **options))._check_work_dir()
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
        longer._check_work_dir()


def test_a_chain_recorded_before_per_generation_records_still_resumes(
        chain, tmp_path):
    """chain.json files of older versions hold digests of the whole config
    (the first ones with the speed-only settings in): they resume with the
    same config, refuse another, and are rewritten in the current form."""
    import json
    work_dir, records = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    options = {'resume': True, 'generations.teacher_compile': True}
    runner = GenerationRunner.from_cfg(chain_cfg(copy, **options))
    legacy = dict(config=CHAIN, num_generations=2,
                  fingerprint=runner.legacy_fingerprint(speed_settings=True))
    assert legacy['fingerprint'] != runner.legacy_fingerprint()
    (copy / 'chain.json').write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match=r"the config sections "
                       r"\['generations'\] differ"):
        GenerationRunner.from_cfg(chain_cfg(copy, **{
            'generations.lam': 0.9, **options})).train()
    assert GenerationRunner.from_cfg(chain_cfg(copy, **options)).train() \
        == records
    assert set(json.loads((copy / 'chain.json').read_text())[
        'generations']) == {'0', '1', '2'}


def test_missing_teacher_checkpoint_stops_before_training(chain, tmp_path):
    work_dir, _ = chain
    copy = tmp_path / 'copy'
    shutil.copytree(work_dir, copy)
    shutil.rmtree(copy / 'gen_2')
    (copy / 'gen_1' / 'exported_model.pth').unlink()
    cfg = chain_cfg(copy, resume=True)
    with pytest.raises(FileNotFoundError, match='gen_1/exported_model.pth'):
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


# --- kill-and-resume -------------------------------------------------------

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


def run_chain(config, work_dir, python, extra_env=None, resume=False):
    env = {'OMP_NUM_THREADS': '1', 'PYTHONPATH': REPO}
    env.update(extra_env or {})
    args = [python, 'tools/train.py', str(config), '--work-dir', str(work_dir)]
    if resume:
        args.append('--resume')
    return run_tool(args + RESUME_OPTIONS, env=env)


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


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, python_exe=None):
    import sys
    work_dir = tmp_path_factory.mktemp('uninterrupted')
    proc = run_chain(CHAIN, work_dir, sys.executable)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return chain_result(work_dir)


@pytest.mark.parametrize('kill_at', [
    'between_generations', 'between_epochs', 'mid_epoch',
    'while_writing_checkpoint'
])
def test_chain_killed_anywhere_resumes_to_the_same_result(
        uninterrupted, tmp_path, python, kill_at):
    (tmp_path / 'killer.py').write_text(KILLER)
    killing = tmp_path / 'killing_chain.py'
    killing.write_text(
        f'_base_ = [{CHAIN!r}]\n'
        "custom_imports = dict(imports=['mmtolerant', 'killer'])\n"
        "custom_hooks = [dict(type='KillHook')]\n")
    work_dir = tmp_path / 'chain'
    env = {'KILL_AT': kill_at, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'}
    killed = run_chain(killing, work_dir, python, env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (work_dir / 'gen_0' / 'generation.json').is_file()
    assert not (work_dir / 'gen_1' / 'generation.json').exists()
    finished = {
        p: p.stat().st_mtime_ns
        for p in (work_dir / 'gen_0').iterdir()
    }

    resumed = run_chain(CHAIN, work_dir, python, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert 'generation 0/2 is finished' in log and 'not retrained' in log
    if kill_at != 'between_generations':
        assert re.search(r'generation 1: resuming from .*epoch_1\.pth', log)
    # The finished generation was not touched.
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert not list(work_dir.rglob('*.tmp-*'))

    records, exported = chain_result(work_dir)
    ref_records, ref_exported = uninterrupted
    assert records == ref_records
    for ours, ref in zip(exported, ref_exported):
        assert_same_weights(ours, ref)


def test_chain_under_2_process_ddp_on_the_cpu(tmp_path, python):
    work_dir = tmp_path / 'ddp_chain'
    proc = run_tool(
        [
            'bash', 'tools/dist_train.sh', CHAIN, '2', '--work-dir',
            str(work_dir), '--cfg-options', 'train_cfg.max_epochs=1',
            'generations.num_generations=2'
        ],
        env={
            'PYTHON': python,
            'PORT': str(random.randint(20000, 40000))
        })
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'Distributed training: True' in log
    with open(work_dir / 'generations.json') as f:
        records = json.load(f)
    assert [r['generation'] for r in records] == [0, 1, 2]
    # Both ranks trained on half the data: 1347 / (2 x 64) -> 11 iterations.
    assert re.search(r'Epoch\(train\) \[1\]\[10/11\]', log)
    for m in (1, 2):
        assert_same_weights(
            weights(work_dir / f'gen_{m - 1}' / 'exported_model.pth'),
            weights(work_dir / f'gen_{m - 1}' / 'epoch_1.pth'))
    # The final validation pass, split over both ranks, gathered in order.
    assert records[2]['test_predictions_from'] == 'final validation pass'
    probs, labels = exported_model_probs(work_dir / 'gen_2', 'test')
    with np.load(work_dir / 'gen_2' / 'test_predictions.npz') as d:
        np.testing.assert_allclose(d['scores'], probs.numpy(), atol=1e-5)
        np.testing.assert_array_equal(d['labels'], labels.numpy())


def test_overrides_and_hand_on_best(tmp_path):
    cfg = chain_cfg(
        tmp_path, **{
            'generations.num_generations': 1,
            'generations.hand_on': 'best',
            'generations.overrides': {0: {'train_cfg.max_epochs': 2}},
            'default_hooks.checkpoint.save_best': 'accuracy/top1',
            'default_hooks.checkpoint.rule': 'greater',
        })
    records = GenerationRunner.from_cfg(cfg).train()
    assert [r['epochs'] for r in records] == [2, 1]
    best = sorted((tmp_path / 'gen_0').glob('best_accuracy_top1_epoch_*.pth'))
    assert len(best) == 1
    assert records[0]['handed_on'] == best[0].name
    # The best epoch's model, not the final one: predicted again.
    assert records[0]['test_predictions_from'] == 'test pass'
    assert_same_weights(
        weights(tmp_path / 'gen_0' / 'exported_model.pth'), weights(best[0]))


def test_hand_on_best_without_a_best_checkpoint_is_refused_before_training(
        tmp_path):
    cfg = chain_cfg(tmp_path / 'wd', **{
        'generations.num_generations': 1,
        'generations.hand_on': 'best'
    })
    with pytest.raises(ValueError, match='save_best'):
        GenerationRunner.from_cfg(cfg)
    assert not (tmp_path / 'wd').exists()


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


FAILING_RANK = textwrap.dedent("""
    from mmengine.hooks import Hook
    from mmpretrain.registry import HOOKS


    @HOOKS.register_module()
    class FailOnRank1Hook(Hook):
        def before_train(self, runner):
            if runner.rank == 1 and runner.work_dir.endswith('gen_1'):
                raise RuntimeError('rank 1 broke in generation 1')
""")


def test_one_ranks_failure_stops_the_ddp_chain_with_its_error(
        tmp_path, python):
    (tmp_path / 'failing.py').write_text(FAILING_RANK)
    config = tmp_path / 'failing_chain.py'
    config.write_text(
        f'_base_ = [{CHAIN!r}]\n'
        "custom_imports = dict(imports=['mmtolerant', 'failing'])\n"
        "custom_hooks = [dict(type='FailOnRank1Hook')]\n")
    proc = run_tool(
        [
            'bash', 'tools/dist_train.sh',
            str(config), '2', '--work-dir',
            str(tmp_path / 'wd'), '--cfg-options', 'train_cfg.max_epochs=1',
            'generations.num_generations=2'
        ],
        env={
            'PYTHON': python,
            'PORT': str(random.randint(20000, 40000)),
            'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'
        },
        timeout=300)
    assert proc.returncode != 0
    assert 'rank 1 broke in generation 1' in proc.stdout + proc.stderr
    assert (tmp_path / 'wd' / 'gen_0' / 'generation.json').is_file()
    assert not (tmp_path / 'wd' / 'gen_1' / 'generation.json').exists()


def test_plot_chains_tool_compares_chains_side_by_side(chain, tmp_path,
                                                      python):
    work_dir, records = chain
    proc = run_tool([
        python, 'tools/analysis/plot_chains.py',
        str(work_dir),
        str(work_dir), '--labels', 'strict', 'TSD', '--out',
        str(tmp_path / 'chains.png'), '--table',
        str(tmp_path / 'chains.md')
    ])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / 'chains.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = (tmp_path / 'chains.md').read_text().splitlines()
    assert 'strict top-1' in table[0] and 'TSD ensemble' in table[0]
    last = table[-1].split('|')
    assert last[1].strip() == 'M2'
    assert float(last[2]) == pytest.approx(records[2]['top1'], abs=0.005)


def test_secondary_info_tool_reads_a_chains_saved_predictions(
        chain, tmp_path, python):
    from mmtolerant.evaluation.secondary_info import secondary_info
    work_dir, records = chain
    proc = run_tool([
        python, 'tools/analysis/secondary_info.py',
        str(work_dir), '--labels', 'tsd', '--groups', 'fashion_mnist',
        '--k', '3', '--out-dir',
        str(tmp_path / 'si')
    ])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / 'si' / 'secondary_info.json') as f:
        rows = json.load(f)['rows']
    assert [r['name'] for r in rows] == ['tsd M0', 'tsd M1', 'tsd M2']
    for m, row in enumerate(rows):
        with np.load(work_dir / f'gen_{m}' / 'test_predictions.npz') as d:
            expected = secondary_info(d['scores'], 3, [0, 1, 0, 0, 0, 2, 0,
                                                        2, 3, 2])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value)
        assert row['mean_top1_prob'] == pytest.approx(
            records[m]['mean_top1_prob'], abs=1e-6)
    assert (tmp_path / 'si' / 'secondary_info.png').is_file()


def test_secondary_info_tool_averages_chains_that_share_a_label(
        chain, tmp_path, python):
    """Seeds of one setting: rows are the mean over the chains."""
    from mmtolerant.evaluation.secondary_info import secondary_info
    work_dir, _ = chain
    other = tmp_path / 'other_seed'
    shutil.copytree(work_dir, other)
    groups = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]
    expected = []
    for m in range(3):
        with np.load(work_dir / f'gen_{m}' / 'test_predictions.npz') as d:
            scores, labels = d['scores'], d['labels']
        shifted = np.roll(scores, 1, axis=1) ** 2
        shifted /= shifted.sum(1, keepdims=True)
        np.savez(other / f'gen_{m}' / 'test_predictions.npz',
                 scores=shifted, labels=labels)
        a, b = (secondary_info(x, 3, groups) for x in (scores, shifted))
        expected.append({k: (a[k] + b[k]) / 2 for k in a})
    proc = run_tool([
        python, 'tools/analysis/secondary_info.py', str(work_dir),
        str(other), '--labels', 'tsd', 'tsd', '--groups', 'fashion_mnist',
        '--out-dir', str(tmp_path / 'si')
    ])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / 'si' / 'secondary_info.json') as f:
        rows = json.load(f)['rows']
    assert [r['name'] for r in rows] == [
        f'tsd M{m} (mean of 2)' for m in range(3)]
    for row, want in zip(rows, expected):
        assert row['chains'] == 2 and row['group_lift_std'] >= 0
        for key, value in want.items():
            assert row[key] == pytest.approx(value)


def test_linear_probe_tool_equals_a_probe_fitted_by_hand(chain, tmp_path,
                                                        python):
    from mmengine.dataset import pseudo_collate
    from mmpretrain.apis import init_model
    from mmpretrain.registry import DATASETS
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    work_dir, _ = chain
    probe = tmp_path / 'probe.py'
    probe.write_text(
        "pipeline = [dict(type='PackInputs')]\n"
        "probe_train = dict(type='SklearnDigits', split='train', "
        "test_fraction=0.5, seed=3, pipeline=pipeline)\n"
        "probe_test = dict(type='SklearnDigits', split='test', "
        "test_fraction=0.5, seed=3, pipeline=pipeline)\n")
    proc = run_tool([
        python, 'tools/analysis/linear_probe.py',
        str(work_dir), '--labels', 'tsd', '--probe',
        str(probe), '--out',
        str(tmp_path / 'probe.json')
    ])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / 'probe.json') as f:
        rows = json.load(f)['rows']
    assert [r['model'] for r in rows] == ['tsd M0', 'tsd M1', 'tsd M2']

    gen = work_dir / 'gen_2'
    model = init_model(str(gen / 'exported_model.py'),
                       str(gen / 'exported_model.pth'))
    split = {}
    for name in ('train', 'test'):
        ds = DATASETS.build(dict(type='SklearnDigits', split=name,
                                 test_fraction=0.5, seed=3,
                                 pipeline=[dict(type='PackInputs')]))
        data = model.data_preprocessor(
            pseudo_collate([ds[i] for i in range(len(ds))]), False)
        with torch.no_grad():
            x = model.neck(model.backbone(data['inputs']))[-1].numpy()
        y = np.array([int(d.gt_label) for d in data['data_samples']])
        split[name] = (x, y)
    scaler = StandardScaler().fit(split['train'][0])
    clf = LogisticRegression(max_iter=2000, random_state=0).fit(
        scaler.transform(split['train'][0]), split['train'][1])
    expected = 100 * clf.score(scaler.transform(split['test'][0]),
                               split['test'][1])
    assert rows[2]['probe_top1'] == pytest.approx(expected, abs=1e-6)
    assert rows[2]['feature_dim'] == 64


def test_sweep_tool_runs_a_grid_collects_reports_and_skips_finished_runs(
        tmp_path, python):
    args = [
        python, 'tools/analysis/sweep.py', CHAIN, '--grid',
        'generations.teacher_loss.eta=0.5,1.0', '--seeds', '0',
        '--cfg-options', 'train_cfg.max_epochs=1',
        'generations.num_generations=1', '--work-dir',
        str(tmp_path / 'sweep'), '--baseline', 'eta1.0'
    ]
    first = run_tool(args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    with open(tmp_path / 'sweep' / 'sweep.json') as f:
        sweep = json.load(f)
    assert [r['setting'] for r in sweep['runs']] == [
        {'generations.teacher_loss.eta': '0.5'},
        {'generations.teacher_loss.eta': '1.0'}
    ]
    for row in sweep['runs']:
        eta = row['setting']['generations.teacher_loss.eta']
        with open(tmp_path / 'sweep' / f'eta{eta}_seed0' /
                  'generations.json') as f:
            records = json.load(f)
        assert row['final_top1'] == records[-1]['top1']
        assert row['m0_mean_top1_prob'] == records[0]['mean_top1_prob']
        assert f'eta={eta}' in records[0]['trained_with']
    assert (tmp_path / 'sweep' / 'sweep.png').is_file()
    # Per generation, paired with the baseline run of the same seed.
    gens = sweep['generations']
    assert list(gens) == ['eta0.5', 'eta1.0']
    with open(tmp_path / 'sweep' / 'eta0.5_seed0' / 'generations.json') as f:
        tsd = json.load(f)
    with open(tmp_path / 'sweep' / 'eta1.0_seed0' / 'generations.json') as f:
        strict = json.load(f)
    for m in range(2):
        row = gens['eta0.5'][m]
        assert row['top1'] == [tsd[m]['top1'], 0.0]
        assert row['top1_minus_baseline'][0] == pytest.approx(
            tsd[m]['top1'] - strict[m]['top1'])
        assert 'top1_minus_baseline' not in gens['eta1.0'][m]
    assert (tmp_path / 'sweep' / 'sweep_generations.png').is_file()
    assert '(paired)' in (tmp_path / 'sweep' / 'generations.md').read_text()
    again = run_tool(args)
    assert again.returncode == 0
    assert again.stdout.count('finished earlier') == 2


def test_sweep_tool_names_runs_of_several_configs_and_checks_the_baseline(
        tmp_path, python):
    strict = osp.join(REPO, 'configs', 'fashion_mnist_500',
                      'strict_chain_cnn_fm500.py')
    tsd = osp.join(REPO, 'configs', 'fashion_mnist_500',
                   'tsd_chain_cnn_fm500.py')
    args = [python, 'tools/analysis/sweep.py', strict, tsd, '--seeds', '0',
            '1', '--work-dir', str(tmp_path / 'study'), '--dry-run']
    listed = run_tool(args + ['--baseline', 'strict_chain_cnn_fm500'])
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ('strict_chain_cnn_fm500_seed0', 'tsd_chain_cnn_fm500_seed1'):
        assert name in listed.stdout
    wrong = run_tool(args + ['--baseline', 'strict'])
    assert wrong.returncode != 0
    assert "--baseline 'strict' is not one of the settings" in wrong.stderr


def test_linear_probe_summary_is_mean_and_std_per_label_and_generation():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'linear_probe_tool', osp.join(REPO, 'tools', 'analysis',
                                      'linear_probe.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = [dict(model=f'{label} M{m}', probe_top1=value)
            for label, m, value in [('TSD-all', 0, 90.0), ('TSD-all', 0, 94.0),
                                    ('TSD-all', 1, 92.0), ('TSD-all', 1, 92.0),
                                    ('strict', 0, 91.0), ('strict', 0, 93.0)]]
    summary = {(r['label'], r['model']): r for r in tool.summarise(rows)}
    assert summary[('TSD-all', 'M0')]['mean'] == 92.0
    assert summary[('TSD-all', 'M0')]['std'] == pytest.approx(8**0.5)
    assert summary[('TSD-all', 'M1')]['std'] == 0.0
    assert summary[('strict', 'M0')]['runs'] == 2
    assert tool.summarise(rows[:1] + rows[2:3] + rows[4:5]) == []


def test_teacher_options_reach_every_student_and_only_students(tmp_path):
    cfg = chain_cfg(tmp_path, **{
        'generations.teacher_autocast': 'bfloat16',
        'generations.teacher_compile': dict(mode='reduce-overhead'),
        'generations.teacher_channels_last': False,
    })
    runner = GenerationRunner.from_cfg(cfg)
    patriarch = runner.generation_cfgs[0].model
    assert 'teacher_autocast' not in patriarch \
        and 'teacher_compile' not in patriarch \
        and 'teacher_channels_last' not in patriarch
    for student in runner.generation_cfgs[1:]:
        assert student.model.teacher_autocast == 'bfloat16'
        assert student.model.teacher_compile == dict(mode='reduce-overhead')
        assert student.model.teacher_channels_last is False


def test_an_ema_validation_is_not_taken_for_the_exported_models(tmp_path):
    """EMAHook validates its averaged weights but the chain hands on the
    trained ones: the test set is predicted again, by the exported model."""
    cfg = chain_cfg(tmp_path, **{'generations.num_generations': 1})
    cfg.custom_hooks = [dict(type='EMAHook', momentum=0.5)]
    records = GenerationRunner.from_cfg(cfg).train()
    assert [r['test_predictions_from'] for r in records] == ['test pass'] * 2
    probs, _ = exported_model_probs(tmp_path / 'gen_1', 'test')
    with np.load(tmp_path / 'gen_1' / 'test_predictions.npz') as d:
        np.testing.assert_allclose(d['scores'], probs.numpy(), atol=1e-6)


def test_views_wrap_the_dataset_after_per_generation_overrides(tmp_path):
    pipeline = [dict(type='RandomFlip', prob=0.5), dict(type='PackInputs')]
    cfg = chain_cfg(tmp_path, **{
        'generations.teacher_cache': dict(views=3),
        'generations.overrides': {1: {
            'train_dataloader.dataset.pipeline': pipeline}},
        'randomness.seed': 11,
    })
    runner = GenerationRunner.from_cfg(cfg)
    assert runner.generation_cfgs[0].train_dataloader.dataset.type == \
        'SklearnDigits'
    for m in (1, 2):
        loader = runner.generation_cfgs[m].train_dataloader
        assert loader.dataset.type == 'AugmentationViews'
        assert loader.dataset.seed == 11  # the run's seed
        assert loader.sampler.views == 3
    assert runner.generation_cfgs[1].train_dataloader.dataset.dataset \
        .pipeline == pipeline
