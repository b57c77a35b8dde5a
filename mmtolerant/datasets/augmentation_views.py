"""A fixed number of augmentation views per training sample (FKD-style).

With a random training pipeline, a cached teacher output is only worth
keeping if the same augmented image comes back. ``AugmentationViews`` makes
view ``v`` of sample ``i`` one fixed image: the sample's pipeline runs with
Python's, NumPy's and torch's CPU random generators seeded from
``(seed, i, v)`` (and restored afterwards), so the same random crop, flip or
RandAugment is drawn every time. ``AugmentationViewSampler`` shows epoch
``e`` view ``e % views`` of every sample (in the usual shuffled order), so a
student trained for E epochs sees ``min(views, E)`` augmentations per
sample, and its frozen teacher runs once per sample and view
(``teacher_cache=dict(views=...)`` of :class:`DistillImageClassifier`).

Set up for every student of a chain by ``generations.teacher_cache.views``.
"""
from typing import Iterator, Optional, Tuple

import numpy as np
from mmengine.dataset import DefaultSampler
from mmpretrain.registry import DATA_SAMPLERS, DATASETS

from mmtolerant.utils.rng import saved_rng_state


def _check_views(owner: str, views) -> int:
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(f'{owner}: views must be an int >= 1, got '
                         f'{views!r}')
    return views


def view_seed(seed: int, index: int, view: int) -> int:
    """The 32-bit seed of view ``view`` of sample ``index``."""
    return int(np.random.SeedSequence([seed, index, view]).generate_state(1)[0])


@DATASETS.register_module()
class AugmentationViews:
    """Wraps a dataset so that ``dataset[(i, v)]`` is view v of sample i.

    ``dataset[i]`` (a plain index) is the wrapped sample with fresh
    randomness, as without the wrapper. The sample's ``DataSample`` gains
    the metainfo ``aug_view`` (v), which the teacher cache reads.

    Args:
        dataset (dict | Dataset): The training dataset (config or built).
        seed (int): Seed of the views; the same seed gives the same images.
            Defaults to 0.
    """

    def __init__(self, dataset, seed: int = 0):
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        self.dataset = dataset
        self.seed = int(seed)

    @property
    def metainfo(self) -> dict:
        return getattr(self.dataset, 'metainfo', {})

    def full_init(self) -> None:
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, view = (int(k) for k in key)
        with saved_rng_state(view_seed(self.seed, index, view)):
            data = self.dataset[index]
        sample = data.get('data_samples') if isinstance(data, dict) else None
        if sample is None or not hasattr(sample, 'set_metainfo'):
            raise TypeError(
                'AugmentationViews needs samples packed by PackInputs (a '
                "dict with 'data_samples'), got "
                f'{type(data).__name__}')
        sample.set_metainfo(dict(aug_view=view))
        return data

    def __repr__(self) -> str:
        return (f'AugmentationViews(seed={self.seed}, '
                f'dataset={self.dataset!r})')


@DATA_SAMPLERS.register_module()
class AugmentationViewSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` that yields ``(index, view)`` with
    ``view = epoch % views`` (the epoch set by ``DistSamplerSeedHook``).

    Args:
        dataset: An :class:`AugmentationViews` dataset.
        views (int): Views per sample; equal to the teacher cache's.
        shuffle, seed, round_up: As in ``DefaultSampler``.
    """

    def __init__(self,
                 dataset,
                 views: int,
                 shuffle: bool = True,
                 seed: Optional[int] = None,
                 round_up: bool = True):
        if not isinstance(dataset, AugmentationViews):
            raise TypeError(
                'AugmentationViewSampler needs an AugmentationViews dataset '
                f'(dataset=dict(type="AugmentationViews", dataset=...)), got '
                f'{type(dataset).__name__}')
        self.views = _check_views('AugmentationViewSampler', views)
        super().__init__(dataset, shuffle=shuffle, seed=seed,
                         round_up=round_up)
        self._iterated = self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch_set = True

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if self.views > 1 and not self._epoch_set and self._iterated:
            raise RuntimeError(
                'AugmentationViewSampler: a new epoch began without '
                'set_epoch(), so it would show view '
                f'{self.epoch % self.views} again instead of the next of its '
                f'{self.views} views; keep default_hooks.sampler_seed='
                "dict(type='DistSamplerSeedHook') (mmengine's default), which "
                'calls it before every epoch')
        self._iterated, self._epoch_set = True, False
        view = self.epoch % self.views
        for index in super().__iter__():
            yield index, view
