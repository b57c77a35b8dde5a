"""Shared helpers and fixtures: tiny real models trained by MMEngine's real
Runner on scikit-learn's digits (no files, no downloads)."""
import os
import os.path as osp
import subprocess
import sys
import uuid

import pytest
import torch
from mmengine.config import Config

import mmtolerant  # noqa: F401

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# The configs read Fashion-MNIST from data/fashion_mnist (downloaded there by
# mmpretrain); the tests read the local copy beside the clone, through the
# configs' switch, in this process and the tools it starts.
FASHION_MNIST = osp.join(REPO, '..', 'shared', 'data', 'fashion_mnist')
if osp.isdir(FASHION_MNIST):
    os.environ.setdefault('MMTOLERANT_FASHION_MNIST',
                          osp.abspath(FASHION_MNIST))
# The algorithm's configs (configs/tsd/, the model-zoo layout).
TSD_CONFIGS = osp.join(REPO, 'configs', 'tsd')
CHAIN = osp.join(TSD_CONFIGS, 'tsd_resnet18-w8_1xb64_digits.py')
# A random training pipeline for the 8x8 digits.
RANDOM_PIPELINE = [dict(type='RandomCrop', crop_size=8, padding=1),
                   dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                   dict(type='PackInputs')]


def digits_cfg(name: str, work_dir: str, **options) -> Config:
    """A digits config of the repo, made small and quick for tests."""
    cfg = Config.fromfile(osp.join(TSD_CONFIGS, name))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'test_{uuid.uuid4().hex[:8]}'
    cfg.train_cfg.max_epochs = 2
    cfg.default_hooks.logger.interval = 5
    cfg.merge_from_dict(options)
    return cfg


def student_cfg(teacher_dir, work_dir, **options):
    options.setdefault('model.teacher.checkpoint',
                       str(teacher_dir / 'exported_model.pth'))
    options.setdefault('model.teacher.config',
                       str(teacher_dir / 'exported_model.py'))
    return digits_cfg('kd_resnet18-w8_resnet18-w8_1xb64_digits.py', work_dir,
                      **options)


def digits_batch(indices=16, split: str = 'train'):
    """A collated batch of digits (``indices``, or the first ``indices``
    when an int), packed without augmentation."""
    from mmengine.dataset import pseudo_collate
    from mmpretrain.registry import DATASETS
    dataset = DATASETS.build(dict(type='SklearnDigits', split=split,
                                  pipeline=[dict(type='PackInputs')]))
    if isinstance(indices, int):
        indices = range(indices)
    return pseudo_collate([dataset[i] for i in indices])


def chain_cfg(work_dir, **options) -> Config:
    """The digits chain M0..M2, one epoch per generation."""
    cfg = Config.fromfile(CHAIN)
    cfg.work_dir = str(work_dir)
    cfg.train_cfg.max_epochs = 1
    cfg.generations.num_generations = 2  # M0, M1, M2
    cfg.merge_from_dict(options)
    return cfg


def rng_states():
    """The states of the random generators of Python, NumPy and torch."""
    import random

    import numpy as np
    return (random.getstate(), np.random.get_state()[1].copy(),
            torch.get_rng_state())


def config_with_hook(folder, base: str, source: str, hook: str) -> str:
    """A config file in ``folder`` that inherits ``base`` and adds the
    hook ``hook`` (e.g. ``"dict(type='KillHook')"``) defined by the Python
    ``source``, written beside it as ``test_hook.py`` (a run imports it
    with ``folder`` on its PYTHONPATH)."""
    with open(osp.join(folder, 'test_hook.py'), 'w') as f:
        f.write(source)
    path = osp.join(folder, 'with_hook.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = [{base!r}]\n'
                "custom_imports = dict(imports=['mmtolerant', 'test_hook'])\n"
                f'custom_hooks = [{hook}]\n')
    return path


def train(cfg: Config):
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def weights(path):
    """The model weights of a checkpoint file (loaded weights-only)."""
    from mmtolerant.utils import extract_state_dict, safe_torch_load
    return extract_state_dict(safe_torch_load(str(path)), str(path))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


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


def run_tool(args, cwd=REPO, env=None, timeout=600, expect=0):
    """Run a command in a fresh process and fail the test, with the end of
    its output, unless it exits with ``expect`` (an exit status, or None
    for any). Returns the finished process; ``proc.log`` is its stdout and
    stderr together."""
    full_env = dict(os.environ)
    full_env.setdefault('PYTHONWARNINGS', 'ignore')
    full_env.update(env or {})
    proc = subprocess.run(
        args, cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout)
    proc.log = proc.stdout + proc.stderr
    if expect is not None:
        assert proc.returncode == expect, (
            f'{" ".join(map(str, args))} exited with {proc.returncode}, '
            f'expected {expect}:\n{proc.log[-4000:]}')
    return proc


@pytest.fixture(scope='session')
def digits_teacher(tmp_path_factory):
    """A strict digits teacher trained for 2 epochs; returns its work_dir
    with exported_model.pth/.py, epoch checkpoints and the config."""
    torch.manual_seed(0)
    work_dir = tmp_path_factory.mktemp('digits_teacher')
    cfg = digits_cfg('strict-teacher_resnet18-w8_1xb64_digits.py', work_dir)
    train(cfg)
    return work_dir


@pytest.fixture(scope='session')
def chain(tmp_path_factory):
    """A finished digits chain M0..M2: (work_dir, records)."""
    from mmtolerant.engine.runner import GenerationRunner
    work_dir = tmp_path_factory.mktemp('chain')
    records = GenerationRunner.from_cfg(chain_cfg(work_dir)).train()
    return work_dir, records


@pytest.fixture
def python():
    return sys.executable
