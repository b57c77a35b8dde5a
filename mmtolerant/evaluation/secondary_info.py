"""How much secondary information a model's predictions carry.

For softmax outputs p (N x C) and a class -> group map (CIFAR-100's 20
superclasses, Fashion-MNIST's natural groups, or any map from a file):

- ``mean_top1_prob``: mean of the largest probability (1 = one-hot, no
  secondary information at all);
- ``entropy``: mean entropy in nats;
- ``secondary_mass``: mean probability of the classes ranked 2..K;
- ``same_group_rate``: among the classes ranked 2..K, the share that sits in
  the primary (top-1) class's group; ``chance_rate`` is that share for K-1
  classes drawn at random from the other classes, and ``group_lift`` their
  ratio (> 1: the secondary classes are semantically related to the primary
  one, which is what a tolerant teacher should keep).
"""
import json
from typing import Dict, List, Optional, Sequence

import numpy as np

# CIFAR-100: the superclass (coarse label) of each fine label, in the order
# of the dataset's fine labels (mmpretrain's CIFAR100 class order).
CIFAR100_COARSE = (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9,
                   7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12,
                   14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16,
                   4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1,
                   9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6,
                   19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)

# Fashion-MNIST: tops (T-shirt, pullover, dress, coat, shirt), footwear
# (sandal, sneaker, ankle boot), trouser, bag.
FASHION_MNIST_GROUPS = (0, 1, 0, 0, 0, 2, 0, 2, 3, 2)

BUILTIN_GROUPS = {
    'cifar100': CIFAR100_COARSE,
    'fashion_mnist': FASHION_MNIST_GROUPS,
}


def load_groups(spec: str) -> np.ndarray:
    """``'cifar100'``, ``'fashion_mnist'``, or a JSON file holding a list
    (group of each class index) or a dict ``{class index: group}``."""
    if spec in BUILTIN_GROUPS:
        return np.asarray(BUILTIN_GROUPS[spec], dtype=np.int64)
    try:
        with open(spec) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f'groups {spec!r} is neither one of '
                         f'{sorted(BUILTIN_GROUPS)} nor an existing JSON '
                         'file') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'groups file {spec!r} is not valid JSON: {e}') \
            from None
    names: Dict = {}  # group names -> indices, in order of appearance

    def index_of(group):
        return names.setdefault(group, len(names))

    if isinstance(data, dict):
        try:
            mapping = {int(k): v for k, v in data.items()}
        except (TypeError, ValueError):
            raise ValueError(f'{spec}: a dict must map class indices to '
                             'groups') from None
        missing = sorted(set(range(max(mapping) + 1)) - set(mapping))
        if missing:
            raise ValueError(f'{spec}: classes {missing} have no group')
        return np.asarray([index_of(mapping[i]) for i in range(len(mapping))],
                          dtype=np.int64)
    if isinstance(data, list):
        return np.asarray([index_of(v) for v in data], dtype=np.int64)
    raise ValueError(f'{spec}: expected a list or a dict, got '
                     f'{type(data).__name__}')


def secondary_info(scores: np.ndarray,
                   k: int,
                   groups: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """The statistics of the module docstring for one model's scores."""
    p = np.asarray(scores, dtype=np.float64)
    n, c = p.shape
    if not 2 <= k <= c:
        raise ValueError(f'k must be in [2, {c}] for {c} classes, got {k}')
    p = p / p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind='stable')
    ranked = np.take_along_axis(p, order, axis=1)
    with np.errstate(divide='ignore', invalid='ignore'):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    out = dict(
        mean_top1_prob=float(ranked[:, 0].mean()),
        entropy=float(entropy.mean()),
        secondary_mass=float(ranked[:, 1:k].sum(axis=1).mean()),
    )
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != c:
            raise ValueError(f'the group map covers {len(groups)} classes, '
                             f'the predictions {c}')
        primary = groups[order[:, 0]]
        secondary = groups[order[:, 1:k]]
        same = (secondary == primary[:, None]).mean()
        sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
        size_of = sizes[np.unique(groups, return_inverse=True)[1]]
        chance = ((size_of[order[:, 0]] - 1) / (c - 1)).mean()
        out.update(
            same_group_rate=float(same),
            chance_rate=float(chance),
            group_lift=float(same / chance) if chance > 0 else float('nan'))
    return out


def secondary_info_table(rows: List[dict], has_groups: bool) -> str:
    head = ('| model | top-1 | mean top-1 prob | entropy | top-K secondary '
            'mass |')
    sep = '| --- | --- | --- | --- | --- |'
    if has_groups:
        head += ' secondary in primary\'s group | chance | lift |'
        sep += ' --- | --- | --- |'
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['name']} | {r['top1']:.2f} | {r['mean_top1_prob']:.4f}"
                f" | {r['entropy']:.4f} | {r['secondary_mass']:.4f} |")
        if has_groups:
            line += (f" {r['same_group_rate']:.4f} | {r['chance_rate']:.4f} "
                     f"| {r['group_lift']:.2f} |")
        lines.append(line)
    return '\n'.join(lines)
