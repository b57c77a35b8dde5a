"""Checks of a training set made before training: what the dataset wrappers
hold, and whether its samples come out the same each time they are drawn."""
import numpy as np
import torch

from mmtolerant.utils.rng import saved_rng_state

# Transforms whose names do not start with ``Random`` but draw at random.
_RANDOM_TRANSFORMS = ('RandAugment', 'AutoAugment', 'ColorJitter',
                      'GaussianBlur', 'Lighting', 'RandomErasing')


def innermost_dataset(dataset):
    """The dataset inside wrappers that repeat, re-weight or re-view
    samples (``RepeatDataset``, ``ClassBalancedDataset``,
    ``AugmentationViews``): the one whose indices are the ``sample_idx``."""
    while hasattr(dataset, 'dataset'):
        dataset = dataset.dataset
    return dataset


def random_transforms(dataset) -> list:
    """Names of the pipeline's transforms that draw at random (by name)."""
    while not hasattr(dataset, 'pipeline') and hasattr(dataset, 'dataset'):
        dataset = dataset.dataset
    names = [type(t).__name__
             for t in getattr(getattr(dataset, 'pipeline', None),
                              'transforms', [])]
    return [n for n in names
            if n.startswith('Random') or n in _RANDOM_TRANSFORMS]


def check_replayable_dataset(dataset, samples: int = 8) -> None:
    """Refuse a training set whose samples come out differently each time
    they are drawn (a random transform in the pipeline), before training:
    a teacher cache without views would otherwise stop at the first
    replayed epoch. Draws the first ``samples`` samples twice and compares
    their ``inputs``; the random generators are restored afterwards, so
    that training sees the same random numbers as without the check."""
    with saved_rng_state():
        for i in range(min(samples, len(dataset))):
            first, second = dataset[i], dataset[i]
            if not (isinstance(first, dict) and isinstance(
                    first.get('inputs'), (torch.Tensor, np.ndarray))):
                return  # not one packed image: nothing to compare
            a, b = (torch.as_tensor(np.asarray(x['inputs']))
                    for x in (first, second))
            if a.shape != b.shape or not torch.equal(a, b):
                names = random_transforms(dataset)
                raise ValueError(
                    f'teacher_cache: training sample {i} comes out of the '
                    'training pipeline differently each time it is drawn '
                    '(a random transform'
                    + (f': {", ".join(names)}' if names else '')
                    + '), so its cached teacher output could not be '
                    'replayed. Set teacher_cache.views=V to cache V fixed '
                    'views of each sample, make the pipeline deterministic, '
                    'or remove teacher_cache to train with the live '
                    'teacher.')
