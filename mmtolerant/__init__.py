"""mmtolerant: train image classifiers in generations with a tolerant teacher.

``import mmtolerant`` registers the plugin's losses, classifiers, datasets,
metrics, hooks and runners in mmpretrain's/MMEngine's registries and applies
the stack fixes of :mod:`mmtolerant.utils.compat`. Configs load it with
``custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)``.
"""
from .utils.compat import apply_compat_fixes

apply_compat_fixes()

from . import datasets, engine, evaluation, models  # noqa: E402,F401
from .version import __version__  # noqa: E402

__all__ = ['__version__']
