"""The plugin's configs in mmpretrain's model index.

mmpretrain finds its own models through ``.mim/model-index.yml``;
:func:`register_model_index` adds ours (``model-index.yml``, importing
``configs/tsd/metafile.yml``) to the same ``ModelHub``, so that after
``import mmtolerant``::

    mmpretrain.list_models('*tsd*')
    mmpretrain.get_model('tsd_resnet18-w8_1xb64_digits')

work as for mmpretrain's models (no published weights: ``pretrained`` takes
a checkpoint, e.g. a chain's ``gen_<m>/exported_model.pth``).
"""
import os.path as osp
from typing import Optional

from mmpretrain.apis import ModelHub

MODEL_INDEX = 'model-index.yml'


def model_index_path() -> Optional[str]:
    """The checkout's ``model-index.yml`` (the configs live in the
    repository, beside the package of an editable install, the documented
    one); None for an install without them."""
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    path = osp.join(osp.dirname(package), MODEL_INDEX)
    return path if osp.isfile(path) else None


def register_model_index() -> None:
    path = model_index_path()
    if path is None:
        return
    from modelindex.load_model_index import load
    index = load(path)
    index.build_models_with_collections()
    if all(ModelHub.has(model.name.lower()) for model in index.models):
        return  # registered already
    ModelHub.register_model_index(path, config_prefix=osp.dirname(path))
