from .augmentation_views import AugmentationViews, AugmentationViewSampler
from .dataset_checks import check_replayable_dataset, innermost_dataset
from .digits import SklearnDigits

__all__ = [
    'SklearnDigits', 'AugmentationViews', 'AugmentationViewSampler',
    'check_replayable_dataset', 'innermost_dataset'
]
