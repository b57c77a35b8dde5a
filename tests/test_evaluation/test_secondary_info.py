"""Secondary-information statistics against hand computations."""
import json

import numpy as np
import pytest
from mmpretrain.datasets import CIFAR100, FashionMNIST

from mmtolerant.evaluation.secondary_info import (CIFAR100_COARSE,
                                                  FASHION_MNIST_GROUPS,
                                                  load_groups, secondary_info)


def test_statistics_equal_a_hand_computation():
    scores = np.array([[0.6, 0.3, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4],
                       [0.5, 0.1, 0.4, 0.0]])
    groups = [0, 0, 1, 1]
    out = secondary_info(scores, k=2, groups=groups)
    assert out['mean_top1_prob'] == pytest.approx((0.6 + 0.4 + 0.5) / 3)
    assert out['secondary_mass'] == pytest.approx((0.3 + 0.3 + 0.4) / 3)
    h = [-(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)),
         -sum(p * np.log(p) for p in (0.1, 0.2, 0.3, 0.4)),
         -(0.5 * np.log(0.5) + 0.1 * np.log(0.1) + 0.4 * np.log(0.4))]
    assert out['entropy'] == pytest.approx(np.mean(h))
    # Secondary classes: 1 (group of 0: yes), 2 (group of 3: yes),
    # 2 (group of 0: no). Chance: 1 other class of 3 in each group.
    assert out['same_group_rate'] == pytest.approx(2 / 3)
    assert out['chance_rate'] == pytest.approx(1 / 3)
    assert out['group_lift'] == pytest.approx(2.0)


def test_k_outside_the_classes_is_refused():
    with pytest.raises(ValueError, match='got 5'):
        secondary_info(np.full((2, 4), 0.25), k=5)


def test_cifar100_superclasses_are_the_datasets_groups_of_five():
    classes = CIFAR100.METAINFO['classes']
    assert len(CIFAR100_COARSE) == 100
    assert np.bincount(CIFAR100_COARSE).tolist() == [5] * 20
    group = dict(zip(classes, CIFAR100_COARSE))
    for members in (('apple', 'mushroom', 'orange', 'pear', 'sweet_pepper'),
                    ('maple_tree', 'oak_tree', 'palm_tree', 'pine_tree',
                     'willow_tree'),
                    ('bicycle', 'bus', 'motorcycle', 'pickup_truck', 'train'),
                    ('baby', 'boy', 'girl', 'man', 'woman'),
                    ('beaver', 'dolphin', 'otter', 'seal', 'whale')):
        assert len({group[m] for m in members}) == 1, members


def test_fashion_mnist_groups_follow_the_garment_kinds():
    classes = FashionMNIST.METAINFO['classes']
    group = dict(zip(classes, FASHION_MNIST_GROUPS))
    tops = {group[c] for c in ('T-shirt/top', 'Pullover', 'Dress', 'Coat',
                               'Shirt')}
    shoes = {group[c] for c in ('Sandal', 'Sneaker', 'Ankle boot')}
    assert len(tops) == len(shoes) == 1 and tops != shoes
    assert len({group['Trouser'], group['Bag'], *tops, *shoes}) == 4


def test_group_maps_from_files(tmp_path):
    as_list = tmp_path / 'list.json'
    as_list.write_text(json.dumps(['a', 'a', 'b']))
    assert load_groups(str(as_list)).tolist() == [0, 0, 1]
    as_dict = tmp_path / 'dict.json'
    as_dict.write_text(json.dumps({'0': 'x', '1': 'y', '2': 'x'}))
    assert load_groups(str(as_dict)).tolist() == [0, 1, 0]
    holes = tmp_path / 'holes.json'
    holes.write_text(json.dumps({'0': 'x', '2': 'y'}))
    with pytest.raises(ValueError, match=r'classes \[1\] have no group'):
        load_groups(str(holes))
    with pytest.raises(ValueError, match='neither one of'):
        load_groups(str(tmp_path / 'missing.json'))
