"""Shared fixtures: tiny real models trained by MMEngine's real Runner on
scikit-learn's digits (no files, no downloads)."""
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
DIGITS = osp.join(REPO, 'configs', 'digits')


def digits_cfg(name: str, work_dir: str, **options) -> Config:
    """A digits config of the repo, made small and quick for tests."""
    cfg = Config.fromfile(osp.join(DIGITS, name))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'test_{uuid.uuid4().hex[:8]}'
    cfg.train_cfg.max_epochs = 2
    cfg.default_hooks.logger.interval = 5
    cfg.merge_from_dict(options)
    return cfg


def train(cfg: Config):
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def run_tool(args, cwd=REPO, env=None, timeout=600):
    """Run a command in a fresh process; fail the test with its output."""
    full_env = dict(os.environ)
    full_env.setdefault('PYTHONWARNINGS', 'ignore')
    full_env.update(env or {})
    proc = subprocess.run(
        args, cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout)
    return proc


@pytest.fixture(scope='session')
def digits_teacher(tmp_path_factory):
    """A strict digits teacher trained for 2 epochs; returns its work_dir
    with exported_model.pth/.py, epoch checkpoints and the config."""
    torch.manual_seed(0)
    work_dir = tmp_path_factory.mktemp('digits_teacher')
    cfg = digits_cfg('strict_teacher_r18t_digits.py', work_dir)
    train(cfg)
    return work_dir


@pytest.fixture
def python():
    return sys.executable
