"""AugmentationViews and AugmentationViewSampler: fixed views of a random
pipeline, shown view epoch % views."""
import pytest
import torch
from mmpretrain.registry import DATASETS

from conftest import RANDOM_PIPELINE, rng_states

VIEW_SET = dict(type='AugmentationViews',
                dataset=dict(type='SklearnDigits', split='train',
                             pipeline=RANDOM_PIPELINE))


def test_a_view_is_one_fixed_image_and_leaves_the_global_rngs_alone():
    import numpy as np
    views = DATASETS.build(VIEW_SET)
    torch.manual_seed(5)
    np.random.seed(5)
    before = rng_states()
    first = [views[(i, v)] for i in range(12) for v in (0, 1)]
    again = [views[(i, v)] for i in range(12) for v in (0, 1)]
    after = rng_states()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) \
        and torch.equal(before[2], after[2])
    for a, b in zip(first, again):
        assert torch.equal(a['inputs'], b['inputs'])
    assert [d['data_samples'].aug_view for d in first[:4]] == [0, 1, 0, 1]
    # 9 crop offsets x 2 flips: views of the same sample differ.
    differ = sum(not torch.equal(first[2 * i]['inputs'],
                                 first[2 * i + 1]['inputs'])
                 for i in range(12))
    assert differ >= 8
    # Another seed gives other views; a plain index fresh randomness.
    other = DATASETS.build(dict(VIEW_SET, seed=1))
    assert sum(not torch.equal(other[(i, 0)]['inputs'],
                               first[2 * i]['inputs']) for i in range(12)) >= 8
    assert 'aug_view' not in views[3]['data_samples']


def test_view_sampler_is_the_default_sampler_with_view_epoch_mod_views():
    from mmengine.dataset import DefaultSampler
    from mmtolerant.datasets import AugmentationViewSampler
    views = DATASETS.build(VIEW_SET)
    ours = AugmentationViewSampler(views, views=3, seed=7)
    reference = DefaultSampler(views, seed=7)
    for epoch in range(5):
        ours.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert list(ours) == [(i, epoch % 3) for i in reference]
    with pytest.raises(ValueError, match='views must be an int >= 1, got 0'):
        AugmentationViewSampler(views, views=0)
    # Two epochs without set_epoch() would show the same view twice.
    fresh = AugmentationViewSampler(views, views=3, seed=7)
    assert {v for _, v in fresh} == {0}
    with pytest.raises(RuntimeError, match='a new epoch began without '
                       r'set_epoch\(\), so it would show view 0 again'):
        list(fresh)
    with pytest.raises(TypeError, match='needs an AugmentationViews dataset'):
        AugmentationViewSampler(views.dataset, views=2)
