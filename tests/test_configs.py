"""The shipped configs: they load, inherit mmpretrain's, build, accept
--cfg-options, and train on data in their real formats."""
import glob
import os.path as osp
import pickle
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import DATASETS, MODELS

from conftest import (FASHION_MNIST, REPO, assert_same_weights, train,
                      weights)
from mmtolerant.utils.config import merge_cfg_options

CONFIGS = sorted(
    p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'),
                         recursive=True) if '_base_' not in p)
INPUT_SHAPES = {'digits': (1, 8, 8), 'fashion-mnist': (1, 28, 28),
                'fashion-mnist-5k': (1, 28, 28),
                'cifar100': (3, 32, 32), 'in1k': (3, 224, 224)}
# What a config trains, the first field of its name.
CHAIN_KINDS = ('tsd', 'tsd-all', 'ban', 'ban-lsr', 'ban-cp', 'tsd-ensemble',
               'ban-ensemble')


def _dataset_of(path):
    """The last field of a config's name (the model zoo's
    ``{algorithm}_{backbone}_{N}xb{B}_{dataset}.py``)."""
    return osp.splitext(osp.basename(path))[0].split('_')[-1]


def _kind_of(path):
    return osp.basename(path).split('_')[0]


def _is_chain(path):
    return _kind_of(path) in CHAIN_KINDS


def _inherits_mmpretrain(path):
    """Whether the ``_base_`` chain of ``path`` reaches ``mmpretrain::``."""
    with open(path) as f:
        text = f.read()
    for base in re.findall(r"['\"]([^'\"]+\.py)['\"]", text):
        if base.startswith('mmpretrain::'):
            return True
        local = osp.join(osp.dirname(path), base)
        if osp.isfile(local) and _inherits_mmpretrain(local):
            return True
    return False


def _random_teacher(cfg, tmp_path):
    """A checkpoint for the teacher config a student config names."""
    teacher_cfg = Config.fromfile(osp.join(REPO, cfg.model.teacher.config))
    teacher = MODELS.build(teacher_cfg.model)
    path = tmp_path / 'teacher.pth'
    torch.save({'state_dict': teacher.state_dict()}, path)
    return str(path)


def test_there_are_strict_tsd_and_student_configs_per_dataset():
    names = {(_dataset_of(p), _kind_of(p)) for p in CONFIGS}
    for dataset in ('fashion-mnist', 'cifar100', 'digits'):
        for kind in ('strict-teacher', 'tsd-teacher', 'kd', 'tsd'):
            assert (dataset, kind) in names
    for dataset in ('fashion-mnist', 'fashion-mnist-5k', 'cifar100'):
        for kind in ('ban', 'tsd', 'ban-lsr', 'ban-cp'):
            assert (dataset, kind) in names
    # The mission's documented entry points keep their names.
    for name in ('tsd_resnet50_in1k.py', 'tsd_resnet18_in1k.py'):
        assert osp.isfile(osp.join(REPO, 'configs', name))


def test_config_names_follow_the_model_zoo_habit():
    # {algorithm}_{backbone}[_{backbone}]_{N}xb{B}_{dataset}.py, one folder
    # per algorithm, no private abbreviations
    pattern = re.compile(r'[a-z0-9-]+(_[a-z0-9-]+){1,2}_\d+xb\d+_[a-z0-9-]+')
    for path in CONFIGS:
        folder = osp.relpath(osp.dirname(path), osp.join(REPO, 'configs'))
        name = osp.splitext(osp.basename(path))[0]
        if folder == '.':
            assert name in ('tsd_resnet50_in1k', 'tsd_resnet18_in1k'), path
            continue
        assert folder == 'tsd', path
        assert pattern.fullmatch(name), name
        for private in ('r18t', 'r18n', 'fm500', 'fmnist', 'cnn'):
            assert private not in name.split('_'), name


@pytest.mark.parametrize('path', [
    p for p in CONFIGS if _is_chain(p) or p.endswith('_in1k.py') and
    not _kind_of(p).startswith('snapshot')], ids=osp.basename)
def test_chain_config_builds_a_generation_runner_with_its_baseline(
        path, tmp_path):
    from mmtolerant.engine.runner import GenerationRunner
    cfg = Config.fromfile(path)
    cfg.work_dir = str(tmp_path)
    runner = GenerationRunner.from_cfg(cfg)
    losses = [c.model.head.loss.type for c in runner.generation_cfgs]
    expected_m0 = {
        'ban': 'CrossEntropyLoss', 'tsd': 'TSDLoss', 'tsd-all': 'TSDLoss',
        'ban-lsr': 'LabelSmoothLoss', 'ban-cp': 'ConfidencePenaltyLoss',
        'tsd-ensemble': 'TSDLoss', 'ban-ensemble': 'CrossEntropyLoss'
    }[_kind_of(path)]
    assert losses[0] == expected_m0
    if cfg.generations.get('tolerant') == 'all':
        # Every teacher keeps the tolerant loss; the last student, who
        # teaches nobody, trains with cross-entropy.
        assert set(losses[:-1]) == {expected_m0}
        assert losses[-1] == 'CrossEntropyLoss'
    else:
        assert set(losses[1:]) == {'CrossEntropyLoss'}
    assert [c.model.type for c in runner.generation_cfgs][1:] == [
        'DistillImageClassifier'] * runner.num_generations
    # The last student, built with a random patriarch as its teacher, takes
    # a training step's loss: teacher and student run in their own layouts.
    from mmpretrain.structures import DataSample
    patriarch = runner.generation_cfgs[0].model
    patriarch.setdefault('data_preprocessor', cfg.data_preprocessor)
    torch.save({'state_dict': MODELS.build(patriarch).state_dict()},
               tmp_path / 'teacher.pth')
    student = runner.generation_cfgs[-1].model
    student.setdefault('data_preprocessor', cfg.data_preprocessor)
    student.teacher = dict(config=patriarch,
                           checkpoint=str(tmp_path / 'teacher.pth'))
    model = MODELS.build(student).train()
    samples = [DataSample().set_gt_label(i) for i in range(2)]
    shape = INPUT_SHAPES[_dataset_of(path)]
    losses = model(torch.randn(2, *shape), samples, mode='loss')
    assert torch.isfinite(losses['loss_kd'])


@pytest.mark.parametrize(
    'path', [p for p in CONFIGS if _kind_of(p).startswith('snapshot')],
    ids=osp.basename)
def test_snapshot_configs_restart_the_schedule_once_per_cycle(path):
    """One cosine cycle per generation: the schedule's periods are the
    hook's cycles; cycle 0's loss is TSD exactly for snapshot-tsd."""
    cfg = Config.fromfile(path)
    [hook] = [h for h in cfg.custom_hooks
              if h.type == 'SnapshotGenerationsHook']
    epochs = cfg.train_cfg.max_epochs
    cycle = epochs // hook.num_cycles
    assert cycle * hook.num_cycles == epochs
    assert cfg.param_scheduler.type == 'CosineRestartLR'
    assert cfg.param_scheduler.periods == [cycle] * hook.num_cycles
    assert cfg.model.type == 'DistillImageClassifier'
    assert cfg.model.teacher is None
    assert cfg.train_cfg.type == 'ResumableEpochBasedTrainLoop'
    assert {'EpochSeedHook', 'PreemptionHook'} <= {
        h.type for h in cfg.custom_hooks}
    tolerant = _kind_of(path) == 'snapshot-tsd'
    assert (hook.get('first_cycle_loss') or {}).get('type') == (
        'TSDLoss' if tolerant else None)


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_inherits_mmpretrain_and_builds_a_working_model(
        path, tmp_path):
    assert _inherits_mmpretrain(path)
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmpretrain'
    assert 'mmtolerant' in cfg.custom_imports.imports
    model_cfg = cfg.model
    if model_cfg.type == 'DistillImageClassifier' and model_cfg.teacher:
        model_cfg.teacher.checkpoint = _random_teacher(cfg, tmp_path)
    model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    shape = INPUT_SHAPES[_dataset_of(path)]
    num_classes = cfg.data_preprocessor.num_classes
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *shape), mode='tensor')
    assert out.shape == (2, num_classes)


@pytest.mark.parametrize('path', [
    p for p in CONFIGS
    if _dataset_of(p) in ('fashion-mnist', 'fashion-mnist-5k', 'cifar100')
], ids=osp.basename)
def test_data_root_option_moves_every_dataset(path):
    cfg = merge_cfg_options(
        Config.fromfile(path), {'data_root': '/elsewhere/data'})
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == '/elsewhere/data'


def _data_locations(node):
    """Every ``data_root``/``data_prefix`` value in a config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ('data_root', 'data_prefix') and isinstance(value, str):
                yield value
            else:
                yield from _data_locations(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _data_locations(value)


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_no_config_reads_data_from_outside_the_repository(path, monkeypatch):
    """A user's clone has data/<dataset> (mmpretrain's layout, downloaded
    there where mmpretrain can), not our machines' folders: the default of
    every shipped config is a relative path inside the repository."""
    monkeypatch.delenv('MMTOLERANT_FASHION_MNIST', raising=False)
    with open(path) as f:
        assert '/shared/' not in f.read()
    cfg = Config.fromfile(path)
    for location in _data_locations(cfg.to_dict()):
        assert not osp.isabs(location) and '..' not in location.split('/'), \
            location
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        if dataset.get('type') == 'FashionMNIST':
            assert dataset.data_root == 'data/fashion_mnist'
            assert dataset.download is True


def test_an_option_below_a_none_setting_makes_it_a_dict():
    """What the README's settings block writes (teacher_cache=None) can
    still be set from the command line; mmengine alone raises a TypeError."""
    cfg = Config(dict(generations=dict(teacher_cache=None, lam=0.5)))
    with pytest.raises(TypeError):
        Config(dict(cfg.to_dict())).merge_from_dict(
            {'generations.teacher_cache.dtype': 'float16'})
    merge_cfg_options(cfg, {'generations.teacher_cache.dtype': 'float16',
                            'generations.lam': 0.3})
    assert cfg.generations.to_dict() == dict(
        teacher_cache=dict(dtype='float16'), lam=0.3)


@pytest.mark.skipif(not osp.isdir(FASHION_MNIST),
                    reason='needs ../shared/data')
def test_fashion_mnist_val_set_is_the_10k_test_images_not_the_training_set():
    cfg = merge_cfg_options(
        Config.fromfile(
            osp.join(REPO, 'configs', 'tsd', 'strict-teacher_resnet18-w16_'
                     '1xb128_fashion-mnist.py')),
        {'data_root': FASHION_MNIST})
    val = DATASETS.build(cfg.val_dataloader.dataset)
    train_set = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(val) == 10000 and len(train_set) == 60000
    assert val.metainfo['classes'][0] == 'T-shirt/top'


@pytest.mark.parametrize('backbone, neck, head', [
    (dict(type='VisionTransformer',
          arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                    feedforward_channels=64),
          img_size=8, patch_size=2, in_channels=1), None,
     dict(type='VisionTransformerClsHead', num_classes=10, in_channels=32)),
    (dict(type='ResNet', depth=18, in_channels=1, stem_channels=8,
          base_channels=8, strides=(1, 1, 2, 2)),
     dict(type='GlobalAveragePooling'),
     dict(type='LinearClsHead', num_classes=10, in_channels=64)),
], ids=['tiny_vit', 'imagenet_resnet'])
def test_student_with_another_mmpretrain_backbone_trains_from_an_inherited_config(
        digits_teacher, tmp_path, backbone, neck, head):
    base = osp.join(REPO, 'configs', 'tsd',
                    'kd_resnet18-w8_resnet18-w8_1xb64_digits.py')
    path = tmp_path / 'swapped_student.py'
    path.write_text(
        f'_base_ = [{base!r}]\n'
        f'model = dict(backbone=dict(_delete_=True, **{backbone!r}),\n'
        f'             neck={neck!r},\n'
        f'             head=dict(_delete_=True, **{head!r}))\n')
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path / 'wd')
    cfg.experiment_name = f'swap_{backbone["type"]}'
    cfg.train_cfg.max_epochs = 1
    cfg.model.teacher.checkpoint = str(digits_teacher / 'exported_model.pth')
    cfg.model.teacher.config = str(digits_teacher / 'exported_model.py')
    runner = train(cfg)
    assert type(runner.model.backbone).__name__ == backbone['type']
    assert type(runner.model.teacher.backbone).__name__ == 'ResNet_CIFAR'
    assert runner.iter == 1347 // 64  # one epoch, the last 3 images dropped
    assert np.isfinite(runner.message_hub.get_scalar('train/loss_kd').current())


def _write_fake_cifar100(root, n_train=64, n_test=32, seed=0):
    """A tiny set in CIFAR-100's python pickle format."""
    rng = np.random.RandomState(seed)
    folder = osp.join(root, 'cifar-100-python')
    import os
    os.makedirs(folder, exist_ok=True)
    for name, n in (('train', n_train), ('test', n_test)):
        labels = rng.randint(0, 100, size=n).tolist()
        entry = {
            'data': rng.randint(0, 256, size=(n, 3072), dtype=np.uint8),
            'fine_labels': labels,
            'coarse_labels': [label // 5 for label in labels],
        }
        with open(osp.join(folder, name), 'wb') as f:
            pickle.dump(entry, f)
    with open(osp.join(folder, 'meta'), 'wb') as f:
        pickle.dump({'fine_label_names': [f'class{i}' for i in range(100)],
                     'coarse_label_names': [f'group{i}' for i in range(20)]},
                    f)


@pytest.mark.slow
def test_cifar100_configs_train_on_a_synthetic_set_in_cifar_format(
        tmp_path, monkeypatch):
    # The real files are checked against their md5 sums; the synthetic ones
    # cannot match them.
    import mmpretrain.datasets.cifar as cifar
    monkeypatch.setattr(cifar, 'check_md5', lambda *args, **kwargs: True)
    data_root = str(tmp_path / 'cifar100')
    _write_fake_cifar100(data_root)

    def cfg_of(name, work_dir, **options):
        cfg = merge_cfg_options(
            Config.fromfile(osp.join(REPO, 'configs', 'tsd', name)),
            {'data_root': data_root, **options})
        cfg.work_dir = str(tmp_path / work_dir)
        cfg.experiment_name = work_dir
        cfg.train_cfg.max_epochs = 1
        for loader in ('train_dataloader', 'val_dataloader'):
            cfg[loader].num_workers = 0
            cfg[loader].dataset.download = False
        cfg.test_dataloader = cfg.val_dataloader
        return cfg

    strict = train(
        cfg_of('strict-teacher_resnet18_8xb16_cifar100.py', 'strict'))
    assert len(strict.train_dataloader.dataset) == 64
    assert strict.train_dataloader.dataset.metainfo['classes'][0] == 'apple'
    assert strict.iter == 4  # 64 images in batches of 16

    tsd = train(cfg_of('tsd-teacher_resnet18_8xb16_cifar100.py', 'tsd'))
    assert type(tsd.model.head.loss_module).__name__ == 'TSDLoss'
    assert tsd.model.head.loss_module.k == 5
    assert tsd.message_hub.get_scalar('train/loss_tsd_term') is not None

    student = train(
        cfg_of(
            'kd_resnet18_resnet18_8xb16_cifar100.py', 'student', **{
                'model.teacher.checkpoint':
                str(tmp_path / 'tsd' / 'exported_model.pth'),
                'model.teacher.config':
                osp.join(REPO, 'configs', 'tsd',
                         'tsd-teacher_resnet18_8xb16_cifar100.py')
            }))
    metrics = student.val_loop.run()
    assert {'accuracy/top1', 'teacher_accuracy/top1'} <= set(metrics)


# --- the model-zoo habit: configs/tsd/README.md, metafile.yml, model index

def _metafile_models():
    from modelindex.load_model_index import load
    index = load(osp.join(REPO, 'model-index.yml'))
    index.build_models_with_collections()
    return {model.name: model for model in index.models}


def test_the_model_index_lists_every_config_of_the_algorithm_folder():
    models = _metafile_models()
    shipped = {osp.splitext(osp.basename(p))[0]
               for p in glob.glob(osp.join(REPO, 'configs', 'tsd', '*.py'))}
    assert set(models) == shipped
    for name, model in models.items():
        assert model.config == f'configs/tsd/{name}.py'
        assert model.in_collection == 'TSD'


def test_every_result_in_the_metafile_is_in_the_algorithms_readme():
    with open(osp.join(REPO, 'configs', 'tsd', 'README.md')) as f:
        rows = {line.split('|')[1].strip(): line for line in f
                if line.startswith('| [')}
    results = {name: model.results[0].metrics['Top 1 Accuracy']
               for name, model in _metafile_models().items()
               if model.results}
    assert 'tsd_resnet18-w8_1xb64_digits' in results  # the quick start
    for name, top1 in results.items():
        row = rows[f'[{name}]({name}.py)']
        assert f'| {top1:.2f} ± ' in row, (name, row)


def test_mmpretrain_lists_and_builds_our_models(digits_teacher):
    import mmpretrain
    names = mmpretrain.list_models('*tsd*')
    assert {'tsd_resnet18-w8_1xb64_digits',
            'tsd_small-convnet_1xb128_fashion-mnist-5k',
            'tsd_resnet50_8xb32_in1k'} <= set(names)
    export = str(digits_teacher / 'exported_model.pth')
    model = mmpretrain.get_model('strict-teacher_resnet18-w8_1xb64_digits',
                                 pretrained=export)
    assert_same_weights(model.state_dict(), weights(export))


def test_the_readme_shows_what_the_quick_start_gives_over_seeds():
    # The table a user compares a run with: every generation's mean, std
    # and range over at least 3 seeds; its last generation is the
    # metafile's number for the quick start's config.
    with open(osp.join(REPO, 'README.md')) as f:
        readme = f.read()
    section = readme.split('### What to expect', 1)[1].split('\n## ', 1)[0]
    assert 'Seeds 0, 1 and 2' in section
    rows = re.findall(r'^\| M(\S+).*?\| ([\d.]+) ± ([\d.]+) \| '
                      r'([\d.]+)–([\d.]+) \|', section, re.M)
    assert [r[0][0] for r in rows] == ['⁰', '¹', '²', '³']
    for _, mean, std, low, high in rows:
        assert float(low) <= float(mean) <= float(high)
    top1 = _metafile_models()['tsd_resnet18-w8_1xb64_digits'].results[0]
    assert float(rows[-1][1]) == top1.metrics['Top 1 Accuracy']
