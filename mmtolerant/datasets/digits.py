from typing import List

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

DIGIT_CLASSES = tuple(str(i) for i in range(10))


@DATASETS.register_module()
class SklearnDigits(BaseDataset):
    """scikit-learn's bundled 8x8 handwritten digits: no files, no download.

    1797 grey images of 10 classes, shipped inside scikit-learn. A fixed,
    class-stratified split keeps ``test_fraction`` of each class for
    ``split='test'``; the rest is ``split='train'``. Pixel values (0-16) are
    rescaled to uint8 0-255, so pipelines and preprocessors see ordinary
    images.

    Unlike mmpretrain's MNIST datasets, the split is chosen by ``split``
    alone; ``test_mode`` only controls what it does in ``BaseDataset``.

    Args:
        split (str): 'train' or 'test'. Defaults to 'train'.
        test_fraction (float): Share of each class held out for 'test'.
            Defaults to 0.25.
        seed (int): Seed of the split. Defaults to 0.
        **kwargs: Passed to ``BaseDataset`` (``pipeline``, ``test_mode``...).
    """
    METAINFO = {'classes': DIGIT_CLASSES}

    def __init__(self,
                 split: str = 'train',
                 test_fraction: float = 0.25,
                 seed: int = 0,
                 **kwargs):
        if split not in ('train', 'test'):
            raise ValueError(
                f"SklearnDigits: split must be 'train' or 'test', got "
                f'{split!r}')
        if not 0 < test_fraction < 1:
            raise ValueError('SklearnDigits: test_fraction must be in (0, '
                             f'1), got {test_fraction!r}')
        self.split = split
        self.test_fraction = test_fraction
        self.seed = seed
        kwargs.setdefault('data_root', '')
        super().__init__(ann_file='', **kwargs)

    def load_data_list(self) -> List[dict]:
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        labels = digits.target.astype(np.int64)
        rng = np.random.RandomState(self.seed)
        is_test = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            is_test[idx[:int(round(len(idx) * self.test_fraction))]] = True
        keep = is_test if self.split == 'test' else ~is_test
        return [
            dict(img=images[i], gt_label=int(labels[i]))
            for i in np.flatnonzero(keep)
        ]
