"""mmtolerant: train image classifiers in generations with a tolerant teacher.

``import mmtolerant`` (configs trigger it through ``custom_imports =
dict(imports=['mmtolerant'], allow_failed_imports=False)``) registers the
plugin's losses, classifiers, datasets, metrics, hooks and runners in
mmpretrain's and MMEngine's registries, and extends MMEngine where it is
meant to be extended:

- MMEngine's checkpoint loaders for local paths and http(s) URLs become
  weights-only ones that allow-list the few globals MMEngine writes (torch
  >= 2.6 refuses MMEngine's own checkpoints otherwise, and MMEngine loads
  URLs with ``weights_only=False``; see :mod:`mmtolerant.utils.checkpoint`);
- a file backend ``atomic_local`` is registered (checkpoints written
  through a temporary file and a rename; see :mod:`mmtolerant.utils.fileio`);
- the configs of ``configs/tsd/`` join mmpretrain's model index
  (``mmpretrain.list_models('*tsd*')``, ``get_model(name)``; see
  :mod:`mmtolerant.utils.model_index`).

It patches no class or function of another library. Distributed training
without CUDA is set up by our tools and runner
(:mod:`mmtolerant.utils.distributed`), not at import.
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

from .utils import register_atomic_backend, register_safe_loader  # noqa

register_safe_loader()
register_atomic_backend()

from . import datasets, engine, evaluation, models  # noqa: E402,F401
from .utils.model_index import register_model_index  # noqa: E402

register_model_index()
from .version import __version__  # noqa: E402

__all__ = ['__version__']
