from .augmentation_views import AugmentationViews, AugmentationViewSampler
from .digits import SklearnDigits

__all__ = ['SklearnDigits', 'AugmentationViews', 'AugmentationViewSampler']
