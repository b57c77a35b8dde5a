"""mmtolerant: train image classifiers in generations with a tolerant teacher.

``import mmtolerant`` registers the plugin's losses, classifiers, datasets,
metrics, hooks and runners in mmpretrain's/MMEngine's registries and applies
the stack fixes of :mod:`mmtolerant.utils.compat`. Configs load it with
``custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)``.
"""
import warnings

# mmengine imports pkg_resources, deprecated in the setuptools < 81 it needs.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

try:
    import mmcv  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        'mmtolerant needs mmcv: `pip install mmcv-lite==2.2.0` (enough for '
        'classifiers) or a full mmcv >= 2.0, < 2.4') from e

# mmcv-lite has no compiled ops; mmpretrain's classifiers do not use them,
# so the warning mmpretrain triggers when it imports them only confuses.
warnings.filterwarnings(
    'ignore', message='Fail to import ``MultiScaleDeformableAttention``')

from .utils.compat import apply_compat_fixes  # noqa: E402

apply_compat_fixes()

from . import datasets, engine, evaluation, models  # noqa: E402,F401
from .version import __version__  # noqa: E402

__all__ = ['__version__']
