"""Real 2-process DDP runs over gloo on the CPU, through the README's
``tools/dist_train.sh``: a student, the shared teacher cache, a chain."""
import json
import math
import os
import os.path as osp
import random
import re
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import (CHAIN, FASHION_MNIST, REPO, assert_same_weights,
                      config_with_hook, exported_model_probs, run_tool,
                      weights)
from mmtolerant.utils import safe_torch_load


def dist_train_student(config, work_dir, teacher, python, *options):
    """``tools/dist_train.sh CONFIG 2`` on the CPU with ``teacher``'s
    export; the run's whole log (asserting it succeeded)."""
    proc = run_tool(
        [
            'bash', 'tools/dist_train.sh', str(config), '2', '--work-dir',
            str(work_dir), '--cfg-options', *options,
            f'model.teacher.checkpoint={teacher}/exported_model.pth',
            f'model.teacher.config={teacher}/exported_model.py'
        ],
        env={
            'PYTHON': python,
            'PORT': str(random.randint(20000, 40000)),
            'CUDA_VISIBLE_DEVICES': ''
        })
    log = proc.stdout + proc.stderr
    return log


@pytest.mark.slow
def test_dist_train_sh_trains_the_distillation_classifier_on_2_cpu_processes(
        digits_teacher, tmp_path, python):
    work_dir = tmp_path / 'ddp'
    log = dist_train_student(
        'configs/tsd/kd_resnet18-w8_resnet18-w8_1xb64_digits.py', work_dir, digits_teacher,
        python, 'train_cfg.max_epochs=1',
        # What stock configs say: the plugin falls back to gloo.
        'env_cfg.dist_cfg.backend=nccl')
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert 'using the gloo backend instead of' in log
    # 1347 images padded to 1348 = 674 per process: 10 full batches of 64
    # (the digits recipe drops the incomplete last one).
    assert re.search(r'Epoch\(train\) \[1\]\[10/10\]', log)
    ckpt = safe_torch_load(str(work_dir / 'epoch_1.pth'))
    assert not any(k.startswith(('teacher', 'module.'))
                   for k in ckpt['state_dict'])
    assert osp.exists(work_dir / 'exported_model.pth')
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values()
               if v.is_floating_point())


@pytest.mark.slow
def test_ddp_ranks_share_the_teacher_cache(digits_teacher, tmp_path, python):
    """2 processes, shuffled: each rank sees other samples every epoch, yet
    the teacher runs once per sample for the whole job (the ranks exchange
    what they compute); epoch 2 is replayed entirely on both ranks."""
    work_dir = tmp_path / 'ddp_cache'
    config = tmp_path / 'cached_student.py'
    config.write_text(
        f"_base_ = ['{osp.join(REPO, 'configs/tsd/kd_resnet18-w8_resnet18-w8_1xb64_digits.py')}']\n"
        "train_dataloader = dict(drop_last=False,\n"
        "    dataset=dict(pipeline=[dict(type='PackInputs')]))\n"
        "model = dict(teacher_cache=dict())\n"
        "custom_hooks = [dict(type='TeacherCacheLoggerHook')]\n")
    log = dist_train_student(config, work_dir, digits_teacher, python,
                             'train_cfg.max_epochs=2')
    # 1347 training images (DDP pads to 1348: one repeat).
    assert 'epoch 1: the teacher filled 1347 entries (job total 1347, 1347 ' \
        'cached)' in log
    assert 'epoch 2: the teacher filled 0 entries (job total 1347, 1347 ' \
        'cached), 11 of 11 batches replayed' in log


CHANGED_INPUT_ON_ONE_RANK = '''
import torch
import torch.distributed as dist
from mmtolerant.models.classifiers.teacher_cache import TeacherOutputCache
from mmtolerant.utils.distributed import end_distributed

dist.init_process_group('gloo')
rank = dist.get_rank()
cache = TeacherOutputCache()
teacher = lambda x: x.flatten(1)[:, :3] * 2
index = torch.arange(4) + 4 * rank
inputs = torch.arange(4 * 6, dtype=torch.float32).reshape(4, 1, 2, 3) + rank
cache.targets(index, inputs, teacher)  # both ranks miss: exchanged
if rank == 1:
    inputs = inputs.flip(-1)  # rank 1's cached samples come back changed
try:
    cache.targets(index, inputs, teacher)
except RuntimeError as e:
    print(f'rank {rank} stopped: {e}', flush=True)
else:
    print(f'rank {rank} went on', flush=True)
# What tools/train.py does at the end; without it a rank whose peer has
# already exited may abort in gloo's teardown (seen once in CI).
end_distributed()
'''


@pytest.mark.slow
def test_a_changed_input_on_one_rank_stops_every_rank(tmp_path, python):
    """The rank whose cached sample changed raises its error and the others
    raise with it, naming the cause, instead of failing in their next
    collective on a peer that left (gloo: "Connection closed by peer"; NCCL:
    a wait until its timeout unless the launcher kills them first)."""
    script = tmp_path / 'changed_input.py'
    script.write_text(CHANGED_INPUT_ON_ONE_RANK)
    proc = run_tool(
        [python, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_port', str(random.randint(20000, 40000)), str(script)],
        env={'CUDA_VISIBLE_DEVICES': ''}, timeout=120, expect=None)
    out = proc.stdout + proc.stderr
    assert re.search(r'rank 1 stopped: teacher_cache: sample_idx 4 reached '
                     'the teacher as a different input', out), out[-3000:]
    assert 'rank 0 stopped: teacher_cache: on 1 other rank(s) a cached ' \
        'sample reached the teacher as a different input' in out, out[-3000:]
    assert proc.returncode == 0, out[-3000:]


PLAN_WITH_A_CACHE = '''
import sys
from mmengine.config import Config
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmtolerant.engine.runner import GenerationRunner
from mmtolerant.utils.config import merge_cfg_options
from mmtolerant.utils.distributed import end_distributed


class Stop(Exception):
    pass


@HOOKS.register_module()
class StopAtTheStartHook(Hook):
    def before_train(self, runner):
        print(f'rank {runner.rank} reached M0', flush=True)
        raise Stop


cfg = merge_cfg_options(
    Config.fromfile('configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py'), {
        'work_dir': sys.argv[1], 'launcher': 'pytorch',
        'data_root': sys.argv[2], 'generations.teacher_cache': dict(),
        'custom_hooks': [dict(type='StopAtTheStartHook')]})
try:
    GenerationRunner.from_cfg(cfg).train()
except Stop:
    pass
# Both ranks stop at the same point: they meet and tear the group down
# (a gloo rank whose peer has exited may abort in its destructor).
end_distributed()
'''


@pytest.mark.slow
def test_a_ddp_chain_with_a_cache_checks_its_students_data_on_every_rank(
        tmp_path, python):
    """mmpretrain's (Fashion)MNIST and CIFAR datasets meet in a barrier
    while they load: a check of the students' training set on rank 0 alone
    would wait there forever while the other ranks wait for the plan."""
    fmnist = FASHION_MNIST
    if not osp.isdir(fmnist):
        pytest.skip('needs ../shared/data')
    script = tmp_path / 'plan.py'
    script.write_text(PLAN_WITH_A_CACHE)
    proc = run_tool(
        [python, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_port', str(random.randint(20000, 40000)), str(script),
         str(tmp_path / 'wd'), fmnist],
        env={'CUDA_VISIBLE_DEVICES': ''}, timeout=180)
    out = proc.stdout + proc.stderr
    assert 'rank 0 reached M0' in out and 'rank 1 reached M0' in out, \
        out[-3000:]


@pytest.mark.slow
def test_chain_under_2_process_ddp_on_the_cpu(tmp_path, python):
    work_dir = tmp_path / 'ddp_chain'
    proc = run_tool(
        [
            'bash', 'tools/dist_train.sh', CHAIN, '2', '--work-dir',
            str(work_dir), '--cfg-options', 'train_cfg.max_epochs=1',
            'generations.num_generations=2', 'generations.report_train=True'
        ],
        env={
            'PYTHON': python,
            'PORT': str(random.randint(20000, 40000))
        })
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log
    with open(work_dir / 'generations.json') as f:
        records = json.load(f)
    assert [r['generation'] for r in records] == [0, 1, 2]
    # Both ranks trained on half the data: 674 images, 10 full batches.
    assert re.search(r'Epoch\(train\) \[1\]\[10/10\]', log)
    # report_train's progress: rank 0's share of the batches, one line per
    # generation (the other rank prints none).
    test_batch = Config.fromfile(CHAIN).test_dataloader.batch_size
    share = math.ceil(math.ceil(1347 / 2) / test_batch)
    assert re.findall(r'\[chain\] M(\d) training set \(report_train\) '
                      r'\(rank 0 of 2\): (\d+)/(\d+) batches \(100%\)',
                      log) == [(str(m), str(share), str(share))
                               for m in range(3)]
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


FAILING_RANK = textwrap.dedent("""
    from mmengine.hooks import Hook
    from mmpretrain.registry import HOOKS


    @HOOKS.register_module()
    class FailOnRank1Hook(Hook):
        def before_train(self, runner):
            if runner.rank == 1 and runner.work_dir.endswith('gen_1'):
                raise RuntimeError('rank 1 broke in generation 1')
""")


@pytest.mark.slow
def test_one_ranks_failure_stops_the_ddp_chain_with_its_error(
        tmp_path, python):
    config = config_with_hook(tmp_path, CHAIN, FAILING_RANK,
                              "dict(type='FailOnRank1Hook')")
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
        timeout=300, expect=None)
    assert proc.returncode != 0
    assert 'rank 1 broke in generation 1' in proc.stdout + proc.stderr
    assert (tmp_path / 'wd' / 'gen_0' / 'generation.json').is_file()
    assert not (tmp_path / 'wd' / 'gen_1' / 'generation.json').exists()


# What a rank on a node without the shared filesystem sees: another
# folder (its own, empty).
RANK_OWN_WORK_DIR = textwrap.dedent("""
    import os
    import runpy
    import sys

    i = sys.argv.index('--work-dir') + 1
    sys.argv[i] += f"_seen_by_rank{os.environ['RANK']}"
    sys.argv[0] = os.environ['TRAIN_TOOL']
    runpy.run_path(sys.argv[0], run_name='__main__')
""")


@pytest.mark.slow
def test_a_work_dir_not_shared_by_every_rank_stops_all_before_training(
        tmp_path, python):
    wrapper = tmp_path / 'own_work_dir.py'
    wrapper.write_text(RANK_OWN_WORK_DIR)
    work_dir = tmp_path / 'wd'
    proc = run_tool(
        [
            python, '-m', 'torch.distributed.run', '--nproc_per_node=2',
            f'--master_port={random.randint(20000, 40000)}',
            str(wrapper), CHAIN, '--work-dir', str(work_dir), '--launcher',
            'pytorch', '--cfg-options', 'train_cfg.max_epochs=1'
        ],
        env={'TRAIN_TOOL': osp.join(REPO, 'tools', 'train.py'),
             'PYTHONPATH': REPO, 'CUDA_VISIBLE_DEVICES': ''},
        timeout=300, expect=None)
    assert proc.returncode != 0
    rank0_dir = tmp_path / 'wd_seen_by_rank0'
    assert re.search(
        rf'the work_dir {re.escape(str(rank0_dir))} is not shared by every '
        r'rank: rank 1 on \S+ did not find the file rank 0', proc.log)
    # Both ranks stopped before any generation started.
    assert 'Epoch(train)' not in proc.log
    assert not list(rank0_dir.glob('gen_*'))
    assert not (rank0_dir / '.shared_by_all_ranks').exists()
