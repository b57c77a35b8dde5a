"""The frozen-teacher classifier, trained with MMEngine's real Runner."""
import os.path as osp
import textwrap

import numpy as np
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmpretrain.registry import MODELS

from conftest import REPO, digits_batch, run_tool, student_cfg, train
from mmtolerant.utils import (CheckpointLoadError, extract_state_dict,
                              safe_torch_load)


@pytest.fixture(scope='module')
def student_run(digits_teacher, tmp_path_factory):
    torch.manual_seed(0)
    work_dir = tmp_path_factory.mktemp('digits_student')
    # The teacher comes from a full Runner checkpoint here (message hub,
    # optimizer state...), read with weights_only=True.
    cfg = student_cfg(
        digits_teacher,
        work_dir,
        **{
            'model.teacher.checkpoint': str(digits_teacher / 'epoch_2.pth'),
            'model.lam': 0.3
        })
    return train(cfg)


def test_teacher_stays_bit_identical_frozen_and_out_of_the_optimizer(
        student_run, digits_teacher):
    model = student_run.model
    teacher = model.teacher
    saved = extract_state_dict(
        safe_torch_load(str(digits_teacher / 'epoch_2.pth')))
    current = teacher.state_dict()
    assert current.keys() == saved.keys()
    for name, value in current.items():  # parameters and BN buffers
        assert torch.equal(value, saved[name]), name

    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None
               for p in teacher.parameters())
    optimized = {
        id(p)
        for group in student_run.optim_wrapper.optimizer.param_groups
        for p in group['params']
    }
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert not optimized & {id(b) for b in teacher.buffers()}
    # The student did train, and the model's own state is the student's.
    assert student_run.iter == 2 * (1347 // 64)  # 2 epochs, drop_last
    assert not any(k.startswith('teacher') for k in model.state_dict())
    assert {id(p) for p in model.parameters()} == optimized


def test_checkpoints_of_a_distillation_run_hold_only_the_student(
        student_run):
    ckpt = safe_torch_load(osp.join(student_run.work_dir, 'epoch_2.pth'))
    stock = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(
                type='ResNet_CIFAR', depth=18, in_channels=1,
                stem_channels=8, base_channels=8),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=64)))
    assert set(ckpt['state_dict']) == set(stock.state_dict())


def test_teacher_sees_exactly_the_students_preprocessed_batch_with_mixup(
        digits_teacher, tmp_path):
    cfg = student_cfg(
        digits_teacher, tmp_path,
        **{'model.train_cfg': dict(augments=dict(type='Mixup', alpha=1.0))})
    cfg.model.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(cfg.model)
    seen = {}
    model.backbone.register_forward_pre_hook(
        lambda m, args: seen.__setitem__('student', args[0].clone()))
    model.teacher.backbone.register_forward_pre_hook(
        lambda m, args: seen.__setitem__('teacher', args[0].clone()))
    batch = digits_batch()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    torch.manual_seed(1)
    log_vars = model.train_step(batch, optim)

    assert torch.equal(seen['student'], seen['teacher'])
    raw = torch.stack(batch['inputs']).float()
    normalised = (raw - 78.1) / 96.0
    # Mixup mixed the normalised images: neither raw nor merely normalised.
    assert not torch.allclose(seen['teacher'], normalised)
    assert seen['teacher'].dtype == torch.float32
    assert {'loss', 'loss_cls', 'loss_kd'} <= set(log_vars)


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_loss_terms_equal_an_independent_computation(digits_teacher,
                                                     tmp_path):
    lam, tau = 0.3, 2.0
    cfg = student_cfg(
        digits_teacher, tmp_path, **{
            'model.lam': lam,
            'model.distill_loss.tau': tau
        })
    cfg.model.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(cfg.model).eval()
    data = model.data_preprocessor(digits_batch(), training=False)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert set(losses) == {'loss_cls', 'loss_kd'}

    with torch.no_grad():
        s = model.head(model.extract_feat(data['inputs'])).double().numpy()
        t = model.teacher.head(model.teacher.extract_feat(
            data['inputs'])).double().numpy()
    y = np.array([int(d.gt_label) for d in data['data_samples']])
    ce = -_log_softmax(s)[np.arange(len(y)), y].mean()
    log_pt, log_ps = _log_softmax(t / tau), _log_softmax(s / tau)
    kl = tau**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean()
    assert losses['loss_cls'].item() == pytest.approx(lam * ce, rel=1e-5)
    assert losses['loss_kd'].item() == pytest.approx((1 - lam) * kl,
                                                     rel=1e-4)
    # The teacher never enters the graph.
    (losses['loss_cls'] + losses['loss_kd']).backward()
    assert all(p.grad is None for p in model.teacher.parameters())


def test_validation_reports_the_student_and_the_teachers_accuracy(
        student_run, digits_teacher):
    metrics = student_run.val_loop.run()
    from mmpretrain.apis import init_model
    teacher = init_model(
        str(digits_teacher / 'exported_model.py'),
        str(digits_teacher / 'exported_model.pth')).eval()
    correct = total = 0
    for batch in student_run.val_dataloader:
        data = teacher.data_preprocessor(batch, training=False)
        with torch.no_grad():
            pred = teacher(data['inputs'], mode='tensor').argmax(1)
        gt = torch.cat([d.gt_label for d in data['data_samples']])
        correct += int((pred == gt).sum())
        total += len(gt)
    assert metrics['teacher_accuracy/top1'] == pytest.approx(
        100.0 * correct / total)
    assert 'accuracy/top1' in metrics


@pytest.mark.slow
def test_exported_student_loads_into_stock_mmpretrain_without_mmtolerant(
        student_run, tmp_path, python):
    work_dir = student_run.work_dir
    inputs = torch.randn(4, 1, 8, 8)
    torch.save(inputs, tmp_path / 'inputs.pth')
    script = textwrap.dedent(f"""
        import sys
        import torch
        from mmpretrain.apis import init_model
        model = init_model({osp.join(work_dir, 'exported_model.py')!r},
                           {osp.join(work_dir, 'exported_model.pth')!r},
                           device='cpu').eval()
        assert type(model).__name__ == 'ImageClassifier', type(model)
        assert 'mmtolerant' not in sys.modules, 'mmtolerant was imported'
        x = torch.load({str(tmp_path / 'inputs.pth')!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(x, mode='tensor'),
                       {str(tmp_path / 'out.pth')!r})
        print('classes', model._dataset_meta['classes'])
    """)
    # Run from tmp_path so the repo's package is not importable by path.
    proc = run_tool([python, '-c', script], cwd=str(tmp_path))
    assert "classes ['0', '1'" in proc.stdout
    stock_out = torch.load(tmp_path / 'out.pth', weights_only=True)
    model = student_run.model.eval()
    with torch.no_grad():
        ours = model(inputs, mode='tensor')
    assert torch.equal(stock_out, ours)


# --- bad configurations fail at build time, naming what is wrong ----------


@pytest.mark.parametrize('options, error, match', [
    ({'model.head.num_classes': 5}, ValueError, 'predicts 10 classes'),
    ({'model.teacher.checkpoint': '/nonexistent/teacher.pth'},
     CheckpointLoadError, '/nonexistent/teacher.pth'),
    ({'model.lam': 1.5}, ValueError, '1.5'),
    ({'model.lam': -0.1}, ValueError, '-0.1'),
    ({'model.distill_loss.loss_weight': 0.9}, ValueError, 'lam'),
    ({'model.distill_loss.tau': 0}, ValueError, 'tau'),
    ({'model.teacher.config': '/nonexistent/teacher_cfg.py'},
     FileNotFoundError, 'teacher_cfg.py'),
    ({'model.teacher.cfg_options': {'data_preprocessor.mean': [0.0]}},
     ValueError, 'normalise inputs differently'),
    ({'model.teacher.cfg_options': {'backbone.base_channels': 16}},
     CheckpointLoadError, 'does not match the teacher config'),
])
def test_bad_teacher_settings_fail_at_build_time(digits_teacher, tmp_path,
                                                options, error, match):
    cfg = student_cfg(digits_teacher, tmp_path, **options)
    cfg.model.data_preprocessor = cfg.data_preprocessor
    with pytest.raises(error, match=match):
        MODELS.build(cfg.model)


def test_unreadable_teacher_checkpoint_is_a_clear_error(digits_teacher,
                                                       tmp_path):
    bad = tmp_path / 'truncated.pth'
    bad.write_bytes((digits_teacher / 'exported_model.pth').read_bytes()[:500])
    cfg = student_cfg(digits_teacher, tmp_path,
                      **{'model.teacher.checkpoint': str(bad)})
    with pytest.raises(CheckpointLoadError, match='truncated.pth'):
        MODELS.build(cfg.model)


def test_a_config_given_as_the_teacher_checkpoint_is_named_as_such(
        digits_teacher, tmp_path):
    """The easy slip of passing exported_model.py for the .pth: a clear
    error before torch.load's own ("pop from empty list")."""
    cfg = student_cfg(digits_teacher, tmp_path, **{
        'model.teacher.checkpoint': str(digits_teacher / 'exported_model.py')})
    with pytest.raises(CheckpointLoadError, match=(
            r"exported_model\.py' is not a PyTorch checkpoint: it starts "
            r"with b'.*a config file goes to the config argument")):
        MODELS.build(cfg.model)
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    cfg.model.teacher.checkpoint = str(empty)
    with pytest.raises(CheckpointLoadError, match='empty.pth.* is empty'):
        MODELS.build(cfg.model)


@pytest.mark.slow
def test_test_tool_reports_metrics_and_dumps_predictions_without_pickle(
        digits_teacher, tmp_path, python):
    config = 'configs/tsd/strict-teacher_resnet18-w8_1xb64_digits.py'
    ckpt = str(digits_teacher / 'exported_model.pth')
    run_tool([
        python, 'tools/test.py', config, ckpt, '--work-dir',
        str(tmp_path / 'wd'), '--out',
        str(tmp_path / 'metrics.json')
    ])
    run_tool([
        python, 'tools/test.py', config, ckpt, '--work-dir',
        str(tmp_path / 'wd'), '--out',
        str(tmp_path / 'pred.npz'), '--out-item', 'pred'
    ])
    import json
    with open(tmp_path / 'metrics.json') as f:
        metrics = json.load(f)
    with np.load(tmp_path / 'pred.npz', allow_pickle=False) as d:
        scores, labels = d['scores'], d['labels']
    assert scores.shape == (450, 10)
    assert metrics['accuracy/top1'] == pytest.approx(
        100 * np.mean(scores.argmax(1) == labels), abs=1e-4)
    # The exported config describes the model alone: said, not a traceback.
    alone = run_tool([
        python, 'tools/test.py', str(digits_teacher / 'exported_model.py'),
        ckpt, '--work-dir', str(tmp_path / 'wd')
    ], expect=1)
    assert 'exported_model.py has no test_dataloader and no test_evaluator' \
        in alone.stderr, alone.stderr[-3000:]


def test_teacher_autocast_runs_the_teacher_in_bf16_close_to_float32(
        digits_teacher, tmp_path):
    cfg = student_cfg(digits_teacher, tmp_path)
    cfg.model.data_preprocessor = cfg.data_preprocessor
    exact = MODELS.build(cfg.model).eval()
    cfg.model.teacher_autocast = 'bfloat16'
    low = MODELS.build(cfg.model).eval()
    low.load_state_dict(exact.state_dict())
    seen = {}
    low.teacher.backbone.register_forward_hook(
        lambda m, args, out: seen.__setitem__('dtype', out[-1].dtype))
    data = exact.data_preprocessor(digits_batch(), training=False)
    t_exact = exact.teacher_logits(data['inputs'])
    t_low = low.teacher_logits(data['inputs'])
    assert seen['dtype'] == torch.bfloat16
    assert t_low.dtype == torch.float32 and not t_low.is_inference()
    assert not torch.equal(t_low, t_exact)
    torch.testing.assert_close(t_low, t_exact, rtol=0.05, atol=0.05)
    kd_exact = exact.loss(data['inputs'], data['data_samples'])['loss_kd']
    kd_low = low.loss(data['inputs'], data['data_samples'])['loss_kd']
    assert kd_low.item() == pytest.approx(kd_exact.item(), rel=0.05)
    cfg.model.teacher_autocast = 'fp8'
    with pytest.raises(ValueError, match="teacher_autocast must be None, "
                       "'bfloat16' or 'float16', got 'fp8'"):
        MODELS.build(cfg.model)


@pytest.mark.slow
def test_teacher_compile_gives_the_eager_teachers_targets(digits_teacher,
                                                          tmp_path):
    """torch.compile with inductor freezing: the training loss sees the
    eager teacher's logits (to float rounding); validation keeps the eager
    teacher; a compiled student would not be frozen by it."""
    import torch._inductor.config as inductor_config
    cfg = student_cfg(digits_teacher, tmp_path)
    cfg.model.data_preprocessor = cfg.data_preprocessor
    eager = MODELS.build(cfg.model).eval()
    cfg.model.teacher_compile = True
    compiled = MODELS.build(cfg.model).eval()
    compiled.load_state_dict(eager.state_dict())
    data = eager.data_preprocessor(digits_batch(), training=False)
    t_eager = eager.teacher_logits(data['inputs'])
    t_compiled = compiled.teacher_logits(data['inputs'], compiled=True)
    assert compiled.frozen_teacher._compiled is not None
    assert t_compiled.dtype == torch.float32 and not t_compiled.is_inference()
    torch.testing.assert_close(t_compiled, t_eager, rtol=1e-4, atol=1e-5)
    kd_eager = eager.loss(data['inputs'], data['data_samples'])['loss_kd']
    kd_compiled = compiled.loss(data['inputs'],
                                data['data_samples'])['loss_kd']
    assert kd_compiled.item() == pytest.approx(kd_eager.item(), rel=1e-4)
    assert inductor_config.freezing is False
    cfg.model.teacher_compile = 'yes'
    with pytest.raises(ValueError, match="teacher_compile must be True, "
                       "False or a dict of torch.compile arguments, got "
                       "'yes'"):
        MODELS.build(cfg.model)


def layout_telling_convs(model):
    """Convolutions whose weight shows the layout (a 1-channel or 1x1
    weight is contiguous in both)."""
    return [m.weight for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
            and m.kernel_size != (1, 1)]


def is_channels_last(weights):
    return all(w.is_contiguous(memory_format=torch.channels_last)
               for w in weights)


def test_a_channels_last_teacher_gives_the_same_targets(digits_teacher,
                                                        tmp_path):
    cfg = student_cfg(digits_teacher, tmp_path)
    cfg.model.data_preprocessor = cfg.data_preprocessor
    cfg.model.teacher_channels_last = False
    eager = MODELS.build(cfg.model).eval()
    assert not any(w.is_contiguous(memory_format=torch.channels_last)
                   for w in layout_telling_convs(eager.teacher))
    cfg.model.pop('teacher_channels_last')  # the default: None (auto)
    nhwc = MODELS.build(cfg.model).eval()
    convs = layout_telling_convs(nhwc.teacher)
    assert convs and is_channels_last(convs)
    nhwc.to('cpu')  # the layout survives a move
    assert is_channels_last(layout_telling_convs(nhwc.teacher))
    data = eager.data_preprocessor(digits_batch(), training=False)
    torch.testing.assert_close(nhwc.teacher_logits(data['inputs']),
                               eager.teacher_logits(data['inputs']),
                               rtol=1e-5, atol=1e-5)
    assert nhwc.frozen_teacher.runs_channels_last  # a ResNet does
    # The export is a stock ImageClassifier config.
    from mmtolerant.models.classifiers import plain_classifier_cfg
    assert 'teacher_channels_last' not in plain_classifier_cfg(cfg.model)
    cfg.model.teacher_channels_last = 1
    with pytest.raises(ValueError, match='teacher_channels_last must be '
                       'None, True or False, got 1'):
        MODELS.build(cfg.model)


def test_a_teacher_that_views_its_feature_map_falls_back_to_nchw(tmp_path):
    """The fashion-mnist-5k configs' CNN flattens its 7x7 map with
    LinearNeck's .view(), which a channels-last tensor refuses: by default the teacher then runs in NCHW
    (the same logits); with teacher_channels_last=True a clear error."""
    from mmengine.config import Config
    base = Config.fromfile(osp.join(REPO, 'configs/_base_/models/'
                                    'small-convnet_fashion-mnist.py'))
    model = dict(base.model, data_preprocessor=dict(
        type='ClsDataPreprocessor', num_classes=10, mean=[72.94],
        std=[90.02]))
    torch.manual_seed(0)
    teacher = MODELS.build(model).eval()
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 't.pth')
    student = dict(model, type='DistillImageClassifier', teacher=dict(
        config=model, checkpoint=str(tmp_path / 't.pth')))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = teacher(x, mode='tensor')
    auto = MODELS.build(student).eval()
    assert is_channels_last(layout_telling_convs(auto.teacher))
    torch.testing.assert_close(auto.teacher_logits(x), expected)
    assert not auto.frozen_teacher.runs_channels_last
    assert not is_channels_last(layout_telling_convs(auto.teacher))
    torch.testing.assert_close(auto.teacher_logits(x), expected)
    # Module.to(memory_format=channels_last) refuses 5-D weights; the
    # teacher's layout leaves them alone.
    from mmtolerant.models.classifiers.frozen_teacher import _set_layout
    mixed = torch.nn.Sequential(torch.nn.Conv3d(2, 2, 1),
                                torch.nn.Conv2d(2, 2, 3))
    _set_layout(mixed, torch.channels_last)
    assert is_channels_last([mixed[1].weight])
    forced = MODELS.build(dict(student, teacher_channels_last=True)).eval()
    with pytest.raises(RuntimeError, match='teacher_channels_last=True but '
                       "the teacher's forward pass fails in channels-last"):
        forced.teacher_logits(x)


def test_the_teacher_runs_in_the_runs_autocast(digits_teacher, tmp_path):
    """Without teacher_autocast the teacher follows the run's precision:
    inside the autocast that mmengine's AmpOptimWrapper opens around the
    loss (bfloat16 on a CPU here) its logits come out in that precision."""
    cfg = student_cfg(digits_teacher, tmp_path)
    cfg.model.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(cfg.model).train()
    data = model.data_preprocessor(digits_batch(), training=True)
    assert model.teacher_logits(data['inputs']).dtype == torch.float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        t_logits = model.teacher_logits(data['inputs'])
        losses = model.loss(data['inputs'], data['data_samples'])
    assert t_logits.dtype == torch.bfloat16
    assert torch.isfinite(losses['loss_kd'])
