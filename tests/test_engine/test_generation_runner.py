"""Chains of generations through the real runner: hand-over, report,
ensembles, per-generation settings and bad input."""
import glob
import json
import os
import os.path as osp
import re

import numpy as np
import pytest
from mmengine.config import Config

from conftest import (CHAIN, assert_same_weights, chain_cfg,
                      exported_model_probs, run_tool, weights)
from mmtolerant.engine.runner import GenerationRunner


def progress_lines(gen_dir):
    """The finish hook's progress lines in a generation's log, up to their
    percentage."""
    (path, ) = glob.glob(osp.join(gen_dir, '*', '*.log'))
    with open(path) as f:
        return re.findall(r'\[chain\] M\d+ [^:\n]*: \d+/\d+ batches \(\d+%\)',
                          f.read())


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


@pytest.mark.slow
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

    run_tool([
        python, 'tools/analysis/ensemble.py',
        str(work_dir), '--sets', '1,2', '0,2', '--out',
        str(work_dir / 'ens.json')
    ])
    with open(work_dir / 'ens.json') as f:
        rows = json.load(f)
    for row in rows:
        mean = np.mean([preds[g][0] for g in row['members']], axis=0)
        assert row['top1'] == pytest.approx(
            100 * np.mean(mean.argmax(1) == labels))


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


@pytest.mark.slow
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
    # Its progress, in the generation's log: one line, the pass is quick.
    batches = -(-len(held_out) // cfg.test_dataloader.batch_size)
    assert progress_lines(tmp_path / 'gen_1') == [
        f'[chain] M1 test set: {batches}/{batches} batches (100%)']


@pytest.mark.slow
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
    # The training set's progress, one line per generation (quick passes);
    # the test set's scores came from the final validation pass.
    batches = -(-len(labels) // cfg.test_dataloader.batch_size)
    for m in range(2):
        assert progress_lines(tmp_path / f'gen_{m}') == [
            f'[chain] M{m} training set (report_train): {batches}/{batches} '
            'batches (100%)']


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


@pytest.mark.slow
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


@pytest.mark.slow
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


INFERENCE = '''
import sys
import numpy as np
from mmpretrain import get_model
from mmpretrain.apis import ImageClassificationInferencer, init_model
gen_dir, images, out = sys.argv[1:4]
cfg, ckpt = f'{gen_dir}/exported_model.py', f'{gen_dir}/exported_model.pth'
inferencer = ImageClassificationInferencer(cfg, pretrained=ckpt, device='cpu')
results = inferencer(list(np.load(images)), batch_size=64)
# Image files, as demo/image_demo.py gives them: read in colour, the grey
# model takes their grey values.
import mmcv
files = [f'digit{i}.png' for i in range(20)]
for path, image in zip(files, np.load(images)):
    mmcv.imwrite(image, path)
from_files = inferencer(files, batch_size=20)
np.testing.assert_allclose(np.stack([r['pred_scores'] for r in from_files]),
                           np.stack([r['pred_scores'] for r in results[:20]]),
                           atol=1e-6)
assert type(init_model(cfg, ckpt)).__name__ == 'ImageClassifier'
assert type(get_model(cfg, pretrained=ckpt)).__name__ == 'ImageClassifier'
assert 'mmtolerant' not in sys.modules, 'mmtolerant was imported'
np.save(out, np.stack([r['pred_scores'] for r in results]))
print('classes', results[0]['pred_class'], inferencer.classes[:3])
'''


@pytest.mark.slow
def test_an_export_predicts_through_mmpretrains_inferencer(chain, tmp_path,
                                                           python):
    """mmpretrain's own inference APIs (ImageClassificationInferencer on
    arrays and on image files, as demo/image_demo.py; init_model; get_model)
    take a generation's export, in a process without mmtolerant, and
    predict what the chain saved."""
    from mmpretrain.registry import DATASETS
    work_dir, _ = chain
    test_set = DATASETS.build(dict(type='SklearnDigits', split='test'))
    np.save(tmp_path / 'images.npy',
            np.stack([test_set.get_data_info(i)['img']
                      for i in range(len(test_set))]))
    (tmp_path / 'infer.py').write_text(INFERENCE)
    proc = run_tool([python, str(tmp_path / 'infer.py'),
                     str(work_dir / 'gen_2'), str(tmp_path / 'images.npy'),
                     str(tmp_path / 'scores.npy')], cwd=str(tmp_path))
    assert "['0', '1', '2']" in proc.stdout
    with np.load(work_dir / 'gen_2' / 'test_predictions.npz') as saved:
        np.testing.assert_allclose(np.load(tmp_path / 'scores.npy'),
                                   saved['scores'], atol=1e-5)


@pytest.mark.parametrize('options, message', [
    ({'generations.teacher_loss.k': 1},
     r'generation 0 cannot build its losses: .*k'),
    ({'train_cfg.max_epochs': 0},
     r'generation 0 has train_cfg.max_epochs=0; every generation trains '
     r'at least one epoch'),
    ({'generations.overrides': {2: {'train_cfg.max_epochs': -1}}},
     r'generation 2 has train_cfg.max_epochs=-1'),
])
def test_a_bad_setting_is_named_by_its_own_key(tmp_path, options, message):
    with pytest.raises(ValueError, match=message) as e:
        GenerationRunner(chain_cfg(tmp_path, **options))
    assert 'report_k' not in str(e.value)
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_chain_that_fails_before_training_leaves_no_generation(
        tmp_path, python):
    """A first run whose data cannot be built leaves no gen_0/ behind, so
    the corrected rerun (the user's next command) needs no --resume."""
    cfg = chain_cfg(tmp_path, **{
        'generations.num_generations': 1,
        'train_dataloader.dataset.type': 'NoSuchDataset'})
    with pytest.raises(KeyError, match='NoSuchDataset'):
        GenerationRunner(cfg).train()
    assert not (tmp_path / 'gen_0').exists()
    run_tool([python, 'tools/train.py', CHAIN, '--work-dir', str(tmp_path),
              '--cfg-options', 'generations.num_generations=1',
              'train_cfg.max_epochs=1'])
    assert (tmp_path / 'gen_1' / 'generation.json').is_file()


def test_every_generation_can_stop_and_resume_mid_epoch(tmp_path):
    """The chain adds the PreemptionHook (a config's own one, with its
    settings, once) and runs MMEngine's epoch loop as the resumable one,
    which chain.json records as the epoch loop it stands for (chains
    recorded before it resume unchanged)."""
    from mmtolerant.engine.runner.chain_record import generation_record
    plain = GenerationRunner.from_cfg(chain_cfg(tmp_path / 'a'))
    own = GenerationRunner.from_cfg(chain_cfg(
        tmp_path / 'b', custom_hooks=[
            dict(type='PreemptionHook', signals=['SIGTERM'],
                 check_interval=5)
        ]))
    for runner, hook in ((plain, dict(type='PreemptionHook')),
                         (own, dict(type='PreemptionHook',
                                    signals=['SIGTERM'],
                                    check_interval=5))):
        for cfg in runner.generation_cfgs:
            hooks = [h for h in cfg.custom_hooks
                     if h['type'] == 'PreemptionHook']
            assert hooks == [hook]
            assert cfg.train_cfg == dict(
                type='ResumableEpochBasedTrainLoop', max_epochs=1,
                val_interval=1)
            record = generation_record(cfg, runner.settings)
            assert record['train_cfg'] == dict(by_epoch=True, max_epochs=1,
                                               val_interval=1)


@pytest.mark.parametrize('options, message', [
    ({'generations.teacher': 'best'},
     r"teacher must be one of \('previous', 'ensemble'\), got 'best'"),
    ({'generations.teacher': 'ensemble', 'generations.ensemble_window': 0},
     r'ensemble_window must be None or an integer >= 1, got 0'),
    ({'generations.ensemble_window': 2},
     r"ensemble_window=2 needs teacher='ensemble'"),
    ({'generations.stop_after': 3},
     r'stop_after must be None or a generation 0\.\.2, got 3'),
    ({'generations.stop_after': True}, 'stop_after must be None'),
    ({'custom_hooks': [dict(type='PreemptionHook', signals=['SIGKILL'])]},
     r"'SIGKILL' is not a signal that can be caught"),
    ({'custom_hooks': [dict(type='PreemptionHook', signals=['USR1'])]},
     r"'USR1' is not a signal that can be caught"),
    ({'custom_hooks': [dict(type='PreemptionHook', check_interval=0)]},
     r'check_interval must be an int >= 1, got 0'),
])
def test_bad_teacher_and_stop_settings_are_refused_naming_the_value(
        tmp_path, options, message):
    from mmpretrain.registry import HOOKS
    cfg = chain_cfg(tmp_path, **options)
    with pytest.raises(ValueError, match=message):
        runner = GenerationRunner.from_cfg(cfg)
        for hook in runner.generation_cfgs[0].custom_hooks:
            HOOKS.build(hook)


def test_an_ensemble_teacher_chain_teaches_each_student_with_all_before_it(
        tmp_path):
    """teacher='ensemble': M2 learns from M0 and M1 together. Its config,
    its role in the report, its recorded teachers, and its teacher's
    top-1 (validated live by the EnsembleTeacher) equal the average of
    M0's and M1's saved test predictions, computed here from the files."""
    import hashlib
    work_dir = tmp_path / 'ensemble'
    runner = GenerationRunner.from_cfg(chain_cfg(
        work_dir, **{'generations.teacher': 'ensemble'}))
    assert runner.generation_cfgs[1].model.teacher.checkpoint.endswith(
        osp.join('gen_0', 'exported_model.pth'))
    assert [m['checkpoint'] for m in
            runner.generation_cfgs[2].model.teacher.members] == [
                str(work_dir / f'gen_{g}' / 'exported_model.pth')
                for g in (0, 1)]
    records = runner.train()
    assert records[2]['trained_with'].startswith(
        'student of the ensemble of M0..M1')
    with open(work_dir / 'gen_2' / 'teacher.json') as f:
        recorded = json.load(f)['teachers']
    assert [r['sha256'] for r in recorded] == [
        hashlib.sha256((work_dir / f'gen_{g}' / 'exported_model.pth')
                       .read_bytes()).hexdigest() for g in (0, 1)]
    probs = []
    for g in (0, 1):
        with np.load(work_dir / f'gen_{g}' / 'test_predictions.npz') as d:
            probs.append(d['scores'].astype(np.float64))
            labels = d['labels']
    expected = 100.0 * np.mean(np.mean(probs, 0).argmax(1) == labels)
    assert records[2]['teacher_top1'] == pytest.approx(expected)
    # The live teacher in M2's validation gave the same accuracy.
    (log, ) = glob.glob(str(work_dir / 'gen_2' / '*' / '*.log'))
    with open(log) as f:
        live = re.findall(r'teacher_accuracy/top1: ([\d.]+)', f.read())
    assert float(live[-1]) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize('teacher, window, expected', [
    ('previous', None, [[], [0], [1], [2], [3]]),
    ('ensemble', None, [[], [0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]),
    ('ensemble', 2, [[], [0], [0, 1], [1, 2], [2, 3]]),
])
def test_each_generations_teachers(teacher, window, expected):
    from mmtolerant.engine.runner import GenerationSettings
    settings = GenerationSettings.from_cfg(dict(
        num_generations=4, teacher=teacher, ensemble_window=window))
    assert [settings.teachers_of(m) for m in range(5)] == expected
