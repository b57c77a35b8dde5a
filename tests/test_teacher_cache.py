"""teacher_cache: replayed teacher outputs equal the live teacher's."""
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmpretrain.registry import DATASETS, MODELS

from conftest import train
from mmtolerant.utils import extract_state_dict, safe_torch_load
from test_distill_classifier import student_cfg

DETERMINISTIC = [dict(type='PackInputs')]


def build(digits_teacher, tmp_path, **options):
    cfg = student_cfg(digits_teacher, tmp_path, **options)
    cfg.model.data_preprocessor = cfg.data_preprocessor
    return MODELS.build(cfg.model)


def batch(indices):
    dataset = DATASETS.build(
        dict(type='SklearnDigits', split='train', pipeline=DETERMINISTIC))
    return pseudo_collate([dataset[i] for i in indices])


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
    data = cached.data_preprocessor(batch(range(16)), training=False)
    first = cached.loss(data['inputs'], data['data_samples'])
    assert len(calls) == 1 and cached.teacher_cache.misses == 1
    # The same samples again, in another order and mixed with new ones.
    again = cached.data_preprocessor(batch(range(15, -1, -1)), False)
    replayed = cached.loss(again['inputs'], again['data_samples'])
    assert len(calls) == 1 and cached.teacher_cache.hits == 1
    expected = live.loss(again['inputs'], again['data_samples'])
    assert torch.equal(
        first['loss_kd'],
        live.loss(data['inputs'], data['data_samples'])['loss_kd'])
    assert replayed['loss_kd'].item() == pytest.approx(
        expected['loss_kd'].item(), rel=rel)
    if dtype == 'float32':
        assert torch.equal(replayed['loss_kd'], expected['loss_kd'])
    mixed = cached.data_preprocessor(batch(range(8, 24)), False)
    cached.loss(mixed['inputs'], mixed['data_samples'])
    assert len(calls) == 2 and len(cached.teacher_cache) == 24
    bytes_per_sample = {'float32': 4, 'float16': 2}[dtype] * 10 + 8 + 1
    assert cached.teacher_cache.nbytes == 1024 * bytes_per_sample


def test_a_changed_input_for_a_cached_sample_stops_with_its_index(
        digits_teacher, tmp_path):
    model = build(digits_teacher, tmp_path,
                  **{'model.teacher_cache': dict()}).eval()
    data = model.data_preprocessor(batch(range(8)), training=False)
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


def test_cached_training_equals_live_training_bit_for_bit(digits_teacher,
                                                          tmp_path):
    """Two epochs with the real Runner: the second replays the cache (no
    teacher forward), and the trained student is identical to one trained
    with the live teacher."""
    results = {}
    for name, cache in (('live', None), ('cached', dict())):
        options = {'train_dataloader.dataset.pipeline': DETERMINISTIC,
                   'randomness.seed': 3, 'train_cfg.max_epochs': 2}
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


def test_chain_with_teacher_cache_equals_the_chain_without(tmp_path):
    """generations.teacher_cache: each student runs its teacher only in its
    first epoch, and the chain ends with the same weights as without."""
    from test_generation_runner import assert_same_weights, chain_cfg, weights
    from mmtolerant.engine.runner import GenerationRunner
    exported = {}
    for name, cache in (('live', None), ('cached', dict())):
        cfg = chain_cfg(tmp_path / name, **{
            'generations.num_generations': 1,
            'generations.teacher_cache': cache,
            'train_cfg.max_epochs': 2,
            'train_dataloader.dataset.pipeline': DETERMINISTIC,
        })
        GenerationRunner.from_cfg(cfg).train()
        student = dumped_config(tmp_path / name / 'gen_1')
        assert ('teacher_cache' in student.model) == (cache is not None)
        exported[name] = weights(tmp_path / name / 'gen_1' /
                                 'exported_model.pth')
    assert_same_weights(exported['cached'], exported['live'])


def dumped_config(gen_dir):
    from mmengine.config import Config
    return Config.fromfile(str(next(gen_dir.glob('*/vis_data/config.py'))))
