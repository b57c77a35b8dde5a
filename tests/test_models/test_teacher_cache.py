"""teacher_cache: replayed teacher outputs equal the live teacher's."""
import logging

import pytest
import torch
from mmpretrain.registry import DATASETS, MODELS

from conftest import (RANDOM_PIPELINE, assert_same_weights, chain_cfg,
                      digits_batch, rng_states, student_cfg, train, weights)
from mmtolerant.utils import extract_state_dict, safe_torch_load

DETERMINISTIC = [dict(type='PackInputs')]


def build(digits_teacher, tmp_path, **options):
    cfg = student_cfg(digits_teacher, tmp_path, **options)
    cfg.model.data_preprocessor = cfg.data_preprocessor
    return MODELS.build(cfg.model)


def count_teacher_calls(model):
    calls = []
    model.teacher.backbone.register_forward_pre_hook(
        lambda m, args: calls.append(1))
    return calls


@pytest.mark.parametrize('dtype, rel', [('float32', 0.0), ('float16', 2e-3)])
def test_replayed_loss_equals_the_live_teachers_loss(digits_teacher,
                                                     tmp_path, dtype, rel):
    live = build(digits_teacher, tmp_path).eval()
    cached = build(digits_teacher, tmp_path,
                   **{'model.teacher_cache': dict(dtype=dtype)}).eval()
    cached.load_state_dict(live.state_dict())
    calls = count_teacher_calls(cached)
    data = cached.data_preprocessor(digits_batch(range(16)), training=False)
    first = cached.loss(data['inputs'], data['data_samples'])
    assert len(calls) == 1 and cached.teacher_cache.misses == 1
    # The same samples again, in another order and mixed with new ones.
    again = cached.data_preprocessor(digits_batch(range(15, -1, -1)), False)
    replayed = cached.loss(again['inputs'], again['data_samples'])
    assert len(calls) == 1 and cached.teacher_cache.hits == 1
    expected = live.loss(again['inputs'], again['data_samples'])
    live_first = live.loss(data['inputs'], data['data_samples'])['loss_kd']
    assert first['loss_kd'].item() == pytest.approx(live_first.item(),
                                                    rel=rel)
    # A miss trains on the targets a replay gives (float16-rounded for a
    # float16 cache): every epoch, and a resumed run, see the same ones.
    assert torch.equal(
        cached.loss(data['inputs'], data['data_samples'])['loss_kd'],
        first['loss_kd'])
    assert replayed['loss_kd'].item() == pytest.approx(
        expected['loss_kd'].item(), rel=rel)
    if dtype == 'float32':
        assert torch.equal(replayed['loss_kd'], expected['loss_kd'])
    mixed = cached.data_preprocessor(digits_batch(range(8, 24)), False)
    cached.loss(mixed['inputs'], mixed['data_samples'])
    assert len(calls) == 2 and len(cached.teacher_cache) == 24
    bytes_per_sample = {'float32': 4, 'float16': 2}[dtype] * 10 + 8 + 1
    assert cached.teacher_cache.nbytes == 1024 * bytes_per_sample


def test_a_changed_input_for_a_cached_sample_stops_with_its_index(
        digits_teacher, tmp_path):
    model = build(digits_teacher, tmp_path,
                  **{'model.teacher_cache': dict()}).eval()
    data = model.data_preprocessor(digits_batch(range(8)), training=False)
    model.loss(data['inputs'], data['data_samples'])
    # A flip keeps every pixel value: the fingerprint must still see it.
    flipped = data['inputs'].clone()
    flipped[3] = torch.flip(flipped[3], dims=[-1])
    assert not torch.equal(flipped[3], data['inputs'][3])
    with pytest.raises(RuntimeError, match='sample_idx 3 reached the teacher '
                       'as a different input'):
        model.loss(flipped, data['data_samples'])
    model.loss(data['inputs'], data['data_samples'])  # unchanged: replayed
    assert model.teacher_cache.hits == 1


@pytest.mark.parametrize('options, match', [
    ({'model.teacher_cache': dict(dtype='int8')},
     r"teacher_cache.dtype must be one of \['float16', 'float32'\], got "
     "'int8'"),
    ({'model.teacher_cache': dict(size=3)}, r"unknown teacher_cache keys "
     r"\['size'\]"),
    ({'model.teacher_cache': dict(),
      'model.train_cfg': dict(augments=dict(type='Mixup', alpha=1.0))},
     'batch augments \\(RandomBatchAugment\\)'),
])
def test_teacher_cache_refuses_what_it_cannot_replay(digits_teacher,
                                                     tmp_path, options,
                                                     match):
    with pytest.raises(ValueError, match=match):
        build(digits_teacher, tmp_path, **options)


@pytest.mark.slow
def test_cached_training_equals_live_training_bit_for_bit(digits_teacher,
                                                          tmp_path):
    """Two epochs with the real Runner: the second replays the cache (no
    teacher forward), and the trained student is identical to one trained
    with the live teacher."""
    results = {}
    for name, cache in (('live', None), ('cached', dict())):
        options = {'train_dataloader.dataset.pipeline': DETERMINISTIC,
                   'randomness.seed': 3, 'train_cfg.max_epochs': 2,
                   # every image in every epoch, for the counts below
                   'train_dataloader.drop_last': False}
        if cache is not None:
            options['model.teacher_cache'] = cache
        runner = train(student_cfg(digits_teacher, tmp_path / name,
                                   **options))
        results[name] = runner
    cache = results['cached'].model.teacher_cache
    steps_per_epoch = len(results['cached'].train_dataloader)
    assert cache.misses == steps_per_epoch and cache.hits == steps_per_epoch
    live = extract_state_dict(
        safe_torch_load(str(tmp_path / 'live' / 'epoch_2.pth')))
    cached = extract_state_dict(
        safe_torch_load(str(tmp_path / 'cached' / 'epoch_2.pth')))
    assert live.keys() == cached.keys()
    for k in live:
        assert torch.equal(live[k], cached[k]), k


@pytest.mark.slow
def test_chain_with_teacher_cache_equals_the_chain_without(tmp_path):
    """generations.teacher_cache: each student runs its teacher only in its
    first epoch, once per sample, and the chain ends with the same weights
    as without."""
    from mmtolerant.engine.runner import GenerationRunner
    exported = {}
    for name, cache in (('live', None), ('cached', dict())):
        cfg = chain_cfg(tmp_path / name, **{
            'generations.num_generations': 2,
            'generations.teacher_cache': cache,
            'train_cfg.max_epochs': 2,
            'train_dataloader.dataset.pipeline': DETERMINISTIC,
            # every image in every epoch, for the counts below
            'train_dataloader.drop_last': False,
        })
        GenerationRunner.from_cfg(cfg).train()
        for m in (1, 2):
            gen_dir = tmp_path / name / f'gen_{m}'
            student = dumped_config(gen_dir)
            assert ('teacher_cache' in student.model) == (cache is not None)
            exported[name, m] = weights(gen_dir / 'exported_model.pth')
            if cache is None:
                continue
            log = next(gen_dir.glob('*/*.log')).read_text()
            # 1347 training images, batches of 64: 22 steps per epoch.
            assert 'epoch 1: the teacher filled 1347 entries (job total ' \
                '1347, 1347 cached), 0 of 22 batches replayed' in log, m
            assert 'epoch 2: the teacher filled 0 entries (job total 1347, ' \
                '1347 cached), 22 of 22 batches replayed' in log, m
    for m in (1, 2):
        assert_same_weights(exported['cached', m], exported['live', m])


@pytest.mark.slow
def test_a_resumed_cached_run_equals_an_uninterrupted_one(digits_teacher,
                                                          tmp_path):
    """Killed after epoch 1 and resumed: the empty cache is filled again
    from the live teacher (float16-rounded like a replay), and the student
    ends bit-identical to an uninterrupted run."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class Stop(Exception):
        pass

    class StopAfterFirstEpoch(Hook):
        def after_train_epoch(self, runner):
            raise Stop

    options = dict(VIEWS, **{
        'randomness.seed': 3, 'train_cfg.max_epochs': 3,
        'default_hooks.checkpoint.interval': 1,
        'model.teacher_cache': dict(views=2, dtype='float16'),
        'custom_hooks': [dict(type='TeacherCacheLoggerHook')]})
    options['train_dataloader.dataset'] = dict(
        VIEWS['train_dataloader.dataset'], _delete_=True)
    train(student_cfg(digits_teacher, tmp_path / 'whole', **options))
    runner = Runner.from_cfg(
        student_cfg(digits_teacher, tmp_path / 'killed', **options))
    # After the CheckpointHook (VERY_LOW) has saved epoch 1.
    runner.register_hook(StopAfterFirstEpoch(), priority='LOWEST')
    with pytest.raises(Stop):
        runner.train()
    resumed = train(student_cfg(digits_teacher, tmp_path / 'killed',
                                resume=True, **options))
    assert resumed.epoch == 3
    cache = resumed.model.teacher_cache
    steps = len(resumed.train_dataloader)
    # Epochs 2 (view 1) and 3 (view 0) refill it: no replay after a resume
    # until a view comes round again.
    assert cache.misses == 2 * steps and cache.hits == 0
    whole = extract_state_dict(
        safe_torch_load(str(tmp_path / 'whole' / 'epoch_3.pth')))
    again = extract_state_dict(
        safe_torch_load(str(tmp_path / 'killed' / 'epoch_3.pth')))
    for k in whole:
        assert torch.equal(whole[k], again[k]), k


def dumped_config(gen_dir):
    from mmengine.config import Config
    return Config.fromfile(str(next(gen_dir.glob('*/vis_data/config.py'))))


# --- views: a random pipeline replayed from a fixed set of views ---------

RANDOM = RANDOM_PIPELINE
VIEWS = {
    'train_dataloader.dataset':
    dict(type='AugmentationViews',
         dataset=dict(type='SklearnDigits', split='train', pipeline=RANDOM)),
    'train_dataloader.sampler':
    dict(type='AugmentationViewSampler', views=2, shuffle=True),
}


@pytest.mark.slow
def test_views_cached_training_equals_live_training_bit_for_bit(
        digits_teacher, tmp_path):
    """A random pipeline, 2 views, 4 epochs with the real Runner: the teacher
    runs in epochs 1-2 only, once per sample and view, and the student equals
    one trained with the live teacher on the same views."""
    runners = {}
    for name, cache in (('live', None), ('cached', dict(views=2))):
        options = dict(VIEWS, **{'randomness.seed': 3,
                                 'train_cfg.max_epochs': 4,
                                 'train_dataloader.drop_last': False})
        options['train_dataloader.dataset'] = dict(
            VIEWS['train_dataloader.dataset'], _delete_=True)
        if cache is not None:
            options['model.teacher_cache'] = cache
            options['custom_hooks'] = [dict(type='TeacherCacheLoggerHook')]
        runners[name] = train(student_cfg(digits_teacher, tmp_path / name,
                                          **options))
    cache = runners['cached'].model.teacher_cache
    steps = len(runners['cached'].train_dataloader)
    n = len(runners['cached'].train_dataloader.dataset)
    assert cache.computed == 2 * n and len(cache) == 2 * n
    # TeacherCacheLoggerHook reserved exactly samples x views entries.
    assert cache.nbytes == 2 * n * (10 * 4 + 8 + 1)
    assert cache.misses == 2 * steps and cache.hits == 2 * steps
    for k, v in run_weights(tmp_path / 'live').items():
        assert torch.equal(v, run_weights(tmp_path / 'cached')[k]), k
    log = next((tmp_path / 'cached').glob('*/*.log')).read_text()
    assert (f'teacher cache (2 views), epoch 3: the teacher filled 0 entries '
            f'(job total {2 * n}, {2 * n} cached), {steps} of {steps} '
            'batches replayed') in log


def run_weights(work_dir):
    return weights(next(work_dir.glob('epoch_*.pth')))


def test_views_without_the_sampler_seed_hook_stop_before_training(
        digits_teacher, tmp_path):
    options = dict(VIEWS, **{
        'model.teacher_cache': dict(views=2),
        'default_hooks.sampler_seed': None,
        'custom_hooks': [dict(type='TeacherCacheLoggerHook')]})
    options['train_dataloader.dataset'] = dict(
        VIEWS['train_dataloader.dataset'], _delete_=True)
    with pytest.raises(ValueError, match=r'teacher_cache.views=2 needs '
                       r"default_hooks.sampler_seed=dict\(type="
                       r"'DistSamplerSeedHook'\)"):
        train(student_cfg(digits_teacher, tmp_path, **options))
    assert not list(tmp_path.glob('epoch_*.pth'))


def test_a_random_pipeline_without_views_is_refused_before_training(
        digits_teacher, tmp_path):
    """Drawing the first samples twice shows the random transform: the
    hook refuses it before the first step (else: an error at the first
    replayed epoch), leaving the random generators as they were."""
    import numpy as np
    from mmtolerant.datasets import check_replayable_dataset
    random_set = DATASETS.build(
        dict(type='SklearnDigits', split='train', pipeline=RANDOM))
    before = rng_states()
    with pytest.raises(ValueError, match=(
            r'teacher_cache: training sample \d comes out of the training '
            r'pipeline differently each time it is drawn \(a random '
            r'transform: RandomCrop, RandomFlip\).*teacher_cache.views=V')):
        check_replayable_dataset(random_set)
    after = rng_states()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) \
        and torch.equal(before[2], after[2])
    check_replayable_dataset(DATASETS.build(
        dict(type='SklearnDigits', split='train', pipeline=DETERMINISTIC)))
    options = {'model.teacher_cache': dict(),
               'train_dataloader.dataset.pipeline': RANDOM,
               'custom_hooks': [dict(type='TeacherCacheLoggerHook')]}
    with pytest.raises(ValueError, match='comes out of the training '
                       'pipeline differently'):
        train(student_cfg(digits_teacher, tmp_path, **options))
    assert not list(tmp_path.glob('**/epoch_*.pth'))


def test_a_chain_with_a_cache_and_a_random_pipeline_stops_before_m0(
        tmp_path):
    """The students' training set is checked when the chain is planned, not
    after the patriarch has trained."""
    from mmtolerant.engine.runner import GenerationRunner
    cfg = chain_cfg(tmp_path / 'wd', **{
        'generations.teacher_cache': dict(),
        'train_dataloader.dataset.pipeline': RANDOM})
    with pytest.raises(ValueError, match=(
            r'generations: generation 1: teacher_cache: training sample \d '
            'comes out of the training pipeline differently')):
        GenerationRunner.from_cfg(cfg).train()
    assert not (tmp_path / 'wd' / 'gen_0').exists()


def test_the_chains_cache_check_builds_wrapped_training_sets(tmp_path):
    """A RepeatDataset builds what it wraps in the default scope's registry:
    the check, made before any Runner exists, sets the scope itself."""
    from mmtolerant.engine.runner import GenerationRunner
    from mmtolerant.engine.runner.generation_config import check_cache_input
    for pipeline in (DETERMINISTIC, RANDOM):
        cfg = chain_cfg(tmp_path / 'wd', **{
            'generations.teacher_cache': dict(),
            'train_dataloader.dataset': dict(
                _delete_=True, type='RepeatDataset', times=2,
                dataset=dict(type='SklearnDigits', split='train',
                             pipeline=pipeline))})
        runner = GenerationRunner.from_cfg(cfg)
        if pipeline is DETERMINISTIC:
            check_cache_input(runner.generation_cfgs[1], 1)
        else:
            with pytest.raises(ValueError, match='differently each time'):
                check_cache_input(runner.generation_cfgs[1], 1)
    # A generation whose overrides drop the cache is not checked.
    cfg = chain_cfg(tmp_path / 'wd', **{
        'generations.teacher_cache': dict(),
        'generations.num_generations': 1,
        'generations.overrides': {1: {'model.teacher_cache': None}}})
    check_cache_input(GenerationRunner.from_cfg(cfg).generation_cfgs[1], 1)


def test_views_need_the_wrapped_dataset(digits_teacher, tmp_path):
    model = build(digits_teacher, tmp_path,
                  **{'model.teacher_cache': dict(views=2)}).eval()
    data = model.data_preprocessor(digits_batch(range(4)), training=False)
    with pytest.raises(ValueError, match="views=2 needs the training set "
                       "wrapped in dict\\(type='AugmentationViews'"):
        model.loss(data['inputs'], data['data_samples'])
    with pytest.raises(ValueError, match='views must be None or an int >= '
                       '1, got 0'):
        build(digits_teacher, tmp_path,
              **{'model.teacher_cache': dict(views=0)})


@pytest.mark.slow
def test_chain_with_views_replays_each_students_teacher(tmp_path):
    """generations.teacher_cache.views: the students train on the views
    (their teacher runs in the first `views` epochs only); the patriarch on
    the ordinary random pipeline; report_train still reads the training
    set through the test pipeline."""
    from mmtolerant.engine.runner import GenerationRunner
    cfg = chain_cfg(tmp_path, **{
        'generations.num_generations': 1,
        'generations.teacher_cache': dict(views=2, dtype='float16'),
        'generations.report_train': True,
        'train_cfg.max_epochs': 3,
        # every view drawn in the first 2 epochs, for the count below
        'train_dataloader.drop_last': False,
    })
    records = GenerationRunner.from_cfg(cfg).train()
    assert records[1]['train_top1'] > 0
    student = dumped_config(tmp_path / 'gen_1')
    assert student.train_dataloader.dataset.type == 'AugmentationViews'
    assert student.train_dataloader.sampler == dict(
        type='AugmentationViewSampler', views=2, shuffle=True)
    assert dumped_config(tmp_path / 'gen_0').train_dataloader.dataset.type \
        == 'SklearnDigits'
    log = next((tmp_path / 'gen_1').glob('*/*.log')).read_text()
    assert 'teacher cache (2 views), epoch 3: the teacher filled 0 entries' \
        in log


# --- topk: FKD's compressed soft labels ---------------------------------

def synthetic_teacher(n, classes=1000, seed=0):
    """Logits as in benchmarks/teacher_cache_memory.py: N(0, 1.5^2) noise,
    the sample's class raised by U(8, 16), 5 "similar" classes by U(2, 6)
    (mean top-1 probability 0.86, 9.5% of the mass outside the top 5)."""
    g = torch.Generator().manual_seed(seed)
    t = 1.5 * torch.randn(n, classes, generator=g)
    t[torch.arange(n), torch.randint(0, classes, (n, ), generator=g)] += \
        8 + 8 * torch.rand(n, generator=g)
    similar = torch.randint(0, classes, (n, 5), generator=g)
    return t.scatter_add_(1, similar, 2 + 4 * torch.rand(n, 5, generator=g))


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_topk_replay_keeps_the_top_k_probabilities_and_spreads_the_rest(
        dtype):
    """At temperature 1 the replayed top-k probabilities are the teacher's
    (computed here from the full logits) and the other classes share the
    remaining mass equally."""
    from mmtolerant.models.classifiers.soft_label_codec import \
        SoftLabelCodec
    logits = synthetic_teacher(64)
    codec = SoftLabelCodec(dtype=dtype, topk=5)
    replayed = codec.decode(codec.encode(logits), 'cpu').softmax(1)
    p = logits.double().softmax(1)
    top, classes = p.topk(5, dim=1)
    rel = {'float32': 1e-5, 'float16': 1e-2}[dtype]
    assert torch.allclose(replayed.gather(1, classes).double(), top,
                          rtol=rel, atol=0)
    others = replayed.scatter(1, classes, float('nan'))
    expected = ((1 - top.sum(1, keepdim=True)) / 995).expand_as(others)
    keep = ~others.isnan()
    assert torch.allclose(others[keep].double(), expected[keep], rtol=rel,
                          atol=0)


def test_topk_entries_take_the_bytes_the_docstring_states():
    from mmtolerant.models.classifiers.teacher_cache import \
        TeacherOutputCache
    # k values (float16) + k classes (int16) + rest (4) + fingerprint (8)
    # + flag (1); int32 classes beyond 32767 classes.
    assert TeacherOutputCache(dtype='float16', topk=10).entry_bytes(1000) \
        == 10 * 2 + 10 * 2 + 4 + 9
    assert TeacherOutputCache(topk=10).entry_bytes(40000) \
        == 10 * 4 + 10 * 4 + 4 + 9
    assert TeacherOutputCache(dtype='float16').entry_bytes(1000) \
        == 1000 * 2 + 9
    cache = TeacherOutputCache(topk=5)
    logits = torch.randn(3, 40000)
    rows = cache.encode(logits)
    assert rows['indices'].dtype == torch.int32
    assert torch.equal(cache.decode(rows, 'cpu').topk(5).indices,
                       logits.topk(5).indices)
    cache.store(torch.arange(3), torch.zeros(3, 1, 2, 2), logits)
    assert cache.nbytes == 1024 * (5 * 4 + 5 * 4 + 4 + 9)


def kl_and_gradient(student, teacher, tau):
    """Mean DistillKLLoss and its gradient w.r.t. the student's logits."""
    from mmtolerant.models.losses.distill_kl_loss import \
        distill_kl_divergence
    student = student.detach().clone().requires_grad_()
    loss = distill_kl_divergence(student, teacher, tau).mean()
    loss.backward()
    return loss.detach(), student.grad


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_topk_replay_is_within_the_stated_tolerance_of_the_full_cache(
        digits_teacher, tmp_path, dtype):
    """soft_label_codec's stated tolerance at temperature 1, k=5. The bound:
    each sample's gradient of the loss with respect to its student logits
    moves by at most 2r in L1 norm (r: the teacher's mass outside its top
    5, computed here from the full logits), for the digits teacher of the
    tests (10 classes, flat: r = 0.43 on average) and the synthetic
    1000-class teacher. Measured on the synthetic teacher: the loss within
    2% and the gradient within 10% (relative L2) for a student far from
    the teacher (random logits), the gradient within 10% for a student
    near it (the teacher's logits + N(0, 1)), whose loss is mostly the
    teacher's own entropy, which top-k changes."""
    from mmtolerant.models.classifiers.soft_label_codec import \
        SoftLabelCodec
    full = build(digits_teacher, tmp_path,
                 **{'model.teacher_cache': dict()}).eval()
    topk = build(digits_teacher, tmp_path, **{
        'model.teacher_cache': dict(dtype=dtype, topk=5)}).eval()
    topk.load_state_dict(full.state_dict())
    data = full.data_preprocessor(digits_batch(range(256)), False)
    inputs, samples = data['inputs'], data['data_samples']
    with torch.no_grad():
        student = full.head(full.extract_feat(inputs))
    teacher = synthetic_teacher(2048)
    codec = SoftLabelCodec(dtype=dtype, topk=5)
    replayed = codec.decode(codec.encode(teacher), 'cpu')
    g = torch.Generator().manual_seed(1)
    far = torch.randn(teacher.shape, generator=g)
    near = teacher + torch.randn(teacher.shape, generator=g)
    rounding = {'float32': 1e-5, 'float16': 1e-2}[dtype]
    for student, exact, compressed in (
            (student, full._teacher_targets(inputs, samples),
             topk._teacher_targets(inputs, samples)),
            (far, teacher, replayed), (near, teacher, replayed)):
        loss, grad = kl_and_gradient(student, exact, 1.0)
        loss_k, grad_k = kl_and_gradient(student, compressed, 1.0)
        rest = 1 - exact.double().softmax(1).topk(5).values.sum(1)
        # Mean reduction: a sample's gradient is (q - p) / N.
        moved = ((grad_k - grad).double() * len(grad)).abs().sum(1)
        assert bool((moved <= 2 * rest + rounding).all())
        if exact is teacher:
            assert float((grad_k - grad).norm() / grad.norm()) < 0.10
        if student is far:
            assert float(loss_k / loss - 1) == pytest.approx(0, abs=0.02)


@pytest.mark.parametrize('options, match', [
    (dict(topk=10), r'teacher_cache.topk=10 must be smaller than the '
     r'number of classes \(10\)'),
    (dict(topk=1), 'teacher_cache.topk must be None or an int >= 2, got 1'),
    (dict(topk=True), 'topk must be None or an int >= 2, got True'),
    (dict(shared='yes'), "teacher_cache.shared must be True, False or "
     "'auto', got 'yes'"),
    (dict(rest='spread'), r"unknown teacher_cache keys \['rest'\] \(known: "
     r'dtype, views, topk, shared\)'),
])
def test_topk_and_shared_settings_are_checked(digits_teacher, tmp_path,
                                              options, match):
    with pytest.raises(ValueError, match=match):
        model = build(digits_teacher, tmp_path,
                      **{'model.teacher_cache': options}).eval()
        # The number of classes is known when the first batch arrives.
        data = model.data_preprocessor(digits_batch(range(4)), False)
        model.loss(data['inputs'], data['data_samples'])


@pytest.mark.parametrize('cache', [
    dict(), dict(dtype='float16'), dict(dtype='float16', topk=5)])
def test_a_cache_rebuilt_after_a_resume_gives_the_same_targets(
        digits_teacher, tmp_path, cache):
    """The cache lives in memory: a resumed run starts with an empty one,
    which the live teacher fills again with the targets the interrupted
    run replayed (a miss trains on what a replay gives)."""
    before = build(digits_teacher, tmp_path,
                   **{'model.teacher_cache': cache}).eval()
    batches = [before.data_preprocessor(digits_batch(range(i, i + 16)),
                                        False) for i in (0, 16)]
    first = [before._teacher_targets(b['inputs'], b['data_samples'])
             for b in batches]
    replayed = [before._teacher_targets(b['inputs'], b['data_samples'])
                for b in batches]
    assert before.teacher_cache.hits == 2
    resumed = build(digits_teacher, tmp_path,
                    **{'model.teacher_cache': cache}).eval()
    resumed.load_state_dict(before.state_dict())
    assert len(resumed.teacher_cache) == 0
    refilled = [resumed._teacher_targets(b['inputs'], b['data_samples'])
                for b in batches]
    assert resumed.teacher_cache.misses == 2
    for a, b, c in zip(first, replayed, refilled):
        assert torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.parametrize('tau, warned', [(1.0, False), (4.0, True)])
def test_topk_with_a_temperature_above_1_is_logged_as_a_warning(
        digits_teacher, tmp_path, monkeypatch, tau, warned):
    import mmtolerant.models.classifiers.distill_classifier as module
    logged = []
    monkeypatch.setattr(module, 'print_log',
                        lambda msg, **kw: logged.append((msg, kw)))
    build(digits_teacher, tmp_path, **{
        'model.teacher_cache': dict(topk=5),
        'model.distill_loss': dict(type='DistillKLLoss', tau=tau)})
    warnings = [msg for msg, kw in logged
                if kw.get('level') == logging.WARNING]
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0].startswith(
            '[mmtolerant] teacher_cache.topk=5 with distill_loss.tau=4: '
            "top-k targets keep the teacher's probabilities at "
            'temperature 1')
