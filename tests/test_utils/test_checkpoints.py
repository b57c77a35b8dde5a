"""Checkpoints: weights-only loading under torch >= 2.6, refusal of files
crafted to run code, and resuming a killed run."""
import os
import os.path as osp
import re
import textwrap

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint
from mmengine.utils import digit_version
from mmpretrain.registry import MODELS

from conftest import REPO, config_with_hook, digits_cfg, run_tool
from mmtolerant.utils import CheckpointLoadError, safe_torch_load


class RunsCode:
    """Pickles as a call of ``os.system``: loading it with plain pickle
    would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class ReachesPrivateAttr:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: a getattr the
    allow-list must not grant (only public HistoryBuffer methods)."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'crafted.pth'
    torch.save(
        {
            'state_dict': {
                'w': torch.zeros(1)
            },
            'meta': RunsCode(marker)
        }, path)
    return path, marker


def test_torch_is_recent_enough_for_these_checks_to_mean_something():
    assert digit_version(torch.__version__) >= digit_version('2.6.0')


def test_crafted_checkpoint_is_refused_and_nothing_runs(crafted):
    path, marker = crafted
    with pytest.raises(CheckpointLoadError, match='crafted.pth'):
        safe_torch_load(str(path))
    # MMEngine's own loader (load_from, resume) goes through ours.
    model = torch.nn.Linear(1, 1)
    with pytest.raises(CheckpointLoadError, match='refused'):
        load_checkpoint(model, str(path))
    assert not marker.exists()


def test_a_damaged_pickle_is_called_damaged_not_code(tmp_path):
    # A legacy (pre-zip) checkpoint starts with the pickle protocol opcode;
    # one whose stream breaks off into noise is damaged, not crafted.
    path = tmp_path / 'damaged.pth'
    path.write_bytes(b'\x80\x02' + bytes(range(157, 257 - 1)) * 2)
    with pytest.raises(CheckpointLoadError,
                       match=r"'.*damaged.pth': it is damaged \(its pickle "
                       r'data does not parse: Unsupported operand') as e:
        safe_torch_load(str(path))
    assert 'execute code' not in str(e.value)


def test_getattr_stand_in_grants_only_public_history_buffer_methods(
        tmp_path):
    path = tmp_path / 'private.pth'
    torch.save({'x': ReachesPrivateAttr()}, path)
    with pytest.raises(CheckpointLoadError, match='__init__'):
        safe_torch_load(str(path))


def test_crafted_teacher_checkpoint_is_refused_at_build(
        crafted, digits_teacher, tmp_path):
    path, marker = crafted
    cfg = digits_cfg(
        'kd_resnet18-w8_resnet18-w8_1xb64_digits.py', tmp_path, **{
            'model.teacher.checkpoint': str(path),
            'model.teacher.config': str(digits_teacher / 'exported_model.py')
        })
    with pytest.raises(CheckpointLoadError, match='refused'):
        MODELS.build(cfg.model)
    assert not marker.exists()


@pytest.mark.slow
def test_crafted_checkpoint_is_refused_by_the_test_tool(
        crafted, digits_teacher, python):
    path, marker = crafted
    proc = run_tool([
        python, 'tools/test.py', 'configs/tsd/strict-teacher_resnet18-w8_1xb64_digits.py',
        str(path), '--work-dir', str(path.parent / 'test_wd')
    ], expect=1)
    assert 'refused to load checkpoint' in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_stock_mmengine_cannot_read_its_own_checkpoint_but_we_can(
        digits_teacher, python, tmp_path):
    """The incompatibility is real (so the fix is needed), and the fix keeps
    weights_only on."""
    ckpt = str(digits_teacher / 'epoch_2.pth')
    script = textwrap.dedent(f"""
        from mmengine.runner.checkpoint import _load_checkpoint
        try:
            _load_checkpoint({ckpt!r}, map_location='cpu')
        except Exception as e:
            print('FAILED', type(e).__name__)
        else:
            print('LOADED')
    """)
    proc = run_tool([python, '-c', script], cwd=str(tmp_path))
    assert 'FAILED UnpicklingError' in proc.stdout, proc.stdout + proc.stderr
    loaded = safe_torch_load(ckpt)
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)


KILLER = textwrap.dedent("""
    import os
    import signal

    from mmengine.hooks import Hook
    from mmpretrain.registry import HOOKS


    @HOOKS.register_module()
    class KillAfterEpochHook(Hook):
        # After CheckpointHook (VERY_LOW): the epoch's checkpoint is written.
        priority = 'LOWEST'

        def __init__(self, epoch):
            self.epoch = epoch

        def after_train_epoch(self, runner):
            if runner.epoch + 1 == self.epoch:
                os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.slow
def test_run_killed_after_an_epoch_resumes_from_its_last_checkpoint(
        digits_teacher, tmp_path, python):
    student = osp.join(REPO, 'configs', 'tsd',
                       'kd_resnet18-w8_resnet18-w8_1xb64_digits.py')
    killing = config_with_hook(tmp_path, student, KILLER,
                               "dict(type='KillAfterEpochHook', epoch=1)")
    work_dir = tmp_path / 'run'
    options = [
        '--work-dir',
        str(work_dir), '--cfg-options', 'train_cfg.max_epochs=3',
        f'model.teacher.checkpoint={digits_teacher / "exported_model.pth"}',
        f'model.teacher.config={digits_teacher / "exported_model.py"}'
    ]
    env = {'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'}
    run_tool([python, 'tools/train.py', str(killing)] + options, env=env,
             expect=-9)
    assert (work_dir / 'epoch_1.pth').exists()
    assert not (work_dir / 'epoch_2.pth').exists()

    resumed = run_tool(
        [python, 'tools/train.py', student, '--resume'] + options, env=env)
    log = resumed.stdout + resumed.stderr
    assert 'resumed epoch: 1' in log
    trained_epochs = set(re.findall(r'Epoch\(train\)\s+\[(\d+)\]', log))
    assert trained_epochs == {'2', '3'}
    final = safe_torch_load(str(work_dir / 'epoch_3.pth'))
    assert final['meta']['epoch'] == 3
    with open(work_dir / 'last_checkpoint') as f:
        assert osp.basename(f.read().strip()) == 'epoch_3.pth'


def test_an_interrupted_checkpoint_write_leaves_the_previous_file_intact(
        tmp_path, monkeypatch):
    """Through the file backend the chain and tools/train.py give every
    CheckpointHook (``backend_args=dict(backend='atomic_local')``)."""
    from mmengine.fileio import get_file_backend
    target = tmp_path / 'epoch_1.pth'
    backend = get_file_backend(backend_args=dict(backend='atomic_local'))
    backend.put(b'good checkpoint', target)

    def killed(fd):
        raise KeyboardInterrupt('killed while writing')

    monkeypatch.setattr(os, 'fsync', killed)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b'half a checkpo', target)
    with pytest.raises(KeyboardInterrupt):
        backend.put_text('half', tmp_path / 'last_checkpoint')
    assert target.read_bytes() == b'good checkpoint'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['epoch_1.pth']


@pytest.mark.slow
def test_import_patches_no_class_of_another_library(python, tmp_path):
    """``import mmtolerant`` registers (modules, a checkpoint loader scheme,
    a file backend) but leaves MMEngine's and torch's code as it was."""
    script = textwrap.dedent("""
        import torch
        from mmengine.dist import utils as dist_utils
        from mmengine.fileio.backends import LocalBackend
        from mmengine.model import MMDistributedDataParallel
        before = (LocalBackend.put, LocalBackend.put_text,
                  dist_utils._init_dist_pytorch, dist_utils.init_dist,
                  MMDistributedDataParallel.__init__, torch.load)
        import mmtolerant
        after = (LocalBackend.put, LocalBackend.put_text,
                 dist_utils._init_dist_pytorch, dist_utils.init_dist,
                 MMDistributedDataParallel.__init__, torch.load)
        print('UNCHANGED' if before == after else 'PATCHED')
    """)
    proc = run_tool([python, '-c', script], cwd=str(tmp_path))
    assert 'UNCHANGED' in proc.stdout, proc.log[-2000:]


def test_the_run_config_writes_checkpoints_atomically_where_local():
    from mmengine.config import Config

    from mmtolerant.utils.fileio import use_atomic_checkpoints
    local = Config(dict(default_hooks=dict(checkpoint=dict(
        type='CheckpointHook', interval=1))))
    use_atomic_checkpoints(local)
    assert local.default_hooks.checkpoint.backend_args == dict(
        backend='atomic_local')
    remote = Config(dict(default_hooks=dict(checkpoint=dict(
        type='CheckpointHook', out_dir='s3://bucket/run'))))
    use_atomic_checkpoints(remote)
    assert 'backend_args' not in remote.default_hooks.checkpoint
