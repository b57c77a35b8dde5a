"""A classifier in its stock mmpretrain form: its config, and its export.

The export is a weights-only checkpoint (tensors and plain Python values, so
stock mmpretrain loads it under torch's ``weights_only=True``) and a config
that stock mmpretrain builds without mmtolerant installed (unless the model
itself is made of the plugin's modules, such as the ``SmallConvNet``
backbone: then the config imports mmtolerant). The config also holds the
run's test pipeline and the checkpoint its class names, which is what
mmpretrain's inference APIs read::

    from mmpretrain.apis import ImageClassificationInferencer, init_model
    model = init_model('exported_model.py', 'exported_model.pth')
    inferencer = ImageClassificationInferencer(
        'exported_model.py', pretrained='exported_model.pth')
"""
import copy
import os
import os.path as osp
from typing import Any, Dict, Optional, Tuple, Union

import torch.nn as nn
from mmengine.config import Config, ConfigDict

from mmtolerant.utils.chain_layout import EXPORT_CFG, EXPORT_CKPT
from mmtolerant.utils.fileio import atomic_torch_save, atomic_write_text
from mmtolerant.utils.model import bare_model

# Arguments of DistillImageClassifier that a plain ImageClassifier lacks.
DISTILL_ONLY_KEYS = ('teacher', 'lam', 'distill_loss', 'eval_teacher',
                     'teacher_cache', 'teacher_autocast', 'teacher_compile',
                     'teacher_channels_last')


def plain_classifier_cfg(model_cfg: Union[dict, ConfigDict]) -> ConfigDict:
    """The stock ``ImageClassifier`` config of a (distillation) model config.

    A ``DistillImageClassifier`` config loses its teacher and
    distillation settings; the rest (backbone, neck, head, preprocessor)
    describes the student exactly, and its weights carry the same names.
    """
    cfg = ConfigDict(copy.deepcopy(dict(model_cfg)))
    if _type_name(cfg.get('type')) in ('DistillImageClassifier',
                                       'mmtolerant.DistillImageClassifier'):
        cfg['type'] = 'ImageClassifier'
        for key in DISTILL_ONLY_KEYS:
            cfg.pop(key, None)
    return cfg


def _type_name(type_) -> str:
    """A registry type given as a name or as the class itself."""
    return type_ if isinstance(type_, str) else getattr(type_, '__name__', '')


def _is_plugin_type(type_name: Any) -> bool:
    from mmpretrain.registry import MODELS
    cls = MODELS.get(type_name) if isinstance(type_name, str) else type_name
    return cls is not None and getattr(cls, '__module__',
                                       '').startswith('mmtolerant')


def _stock_losses(cfg: Any) -> Any:
    """Replace the plugin's training losses by stock cross-entropy.

    The loss does not take part in inference, and stock mmpretrain cannot
    build ``TSDLoss``/``ConfidencePenaltyLoss``.
    """
    if isinstance(cfg, dict):
        out = type(cfg)()
        for key, value in cfg.items():
            if key == 'loss' and isinstance(value, dict) \
                    and _is_plugin_type(value.get('type')):
                value = dict(type='CrossEntropyLoss', loss_weight=1.0)
            out[key] = _stock_losses(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_stock_losses(v) for v in cfg)
    return cfg


def plain_model_cfg(cfg: Config) -> ConfigDict:
    """The stock ``ImageClassifier`` model config of a run's config."""
    model = plain_classifier_cfg(cfg.model)
    if 'data_preprocessor' not in model and cfg.get('data_preprocessor'):
        model['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
    return _stock_losses(model)


def plugin_modules(model_cfg: dict) -> list:
    """Types in ``model_cfg`` that only mmtolerant provides (e.g. the
    ``SmallConvNet`` backbone); an export that has any needs mmtolerant
    installed to be built."""
    return sorted({
        str(v.get('type'))
        for v in _walk_dicts(model_cfg) if _is_plugin_type(v.get('type'))
    })


def _walk_dicts(cfg):
    if isinstance(cfg, dict):
        yield cfg
        for v in cfg.values():
            yield from _walk_dicts(v)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            yield from _walk_dicts(v)


def test_pipeline(cfg: Config) -> Optional[list]:
    """The pipeline of the run's test (else validation) dataset, if it has
    one of its own."""
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    dataset = loader.get('dataset') if isinstance(loader, dict) else None
    pipeline = dataset.get('pipeline') if isinstance(dataset, dict) else None
    return copy.deepcopy(list(pipeline)) if pipeline else None


def _channels(model_cfg: dict) -> Optional[int]:
    """The number of input channels the model normalises, if it says."""
    mean = (model_cfg.get('data_preprocessor') or {}).get('mean')
    return len(mean) if isinstance(mean, (list, tuple)) else None


def _plain_meta(dataset_meta: Optional[dict]) -> Dict[str, Any]:
    meta: Dict[str, Any] = {}
    if dataset_meta and dataset_meta.get('classes') is not None:
        meta['classes'] = [str(c) for c in dataset_meta['classes']]
    return meta


def export_plain_model(cfg: Config,
                       model: nn.Module,
                       out_dir: str,
                       dataset_meta: Optional[dict] = None,
                       extra_meta: Optional[dict] = None) -> Tuple[str, str]:
    """Write ``exported_model.pth`` and ``exported_model.py`` to ``out_dir``.

    ``model`` may be a ``DistillImageClassifier`` (its state dict is the
    student's alone) or any ``ImageClassifier``. Returns both paths.
    """
    model = bare_model(model)
    os.makedirs(out_dir, exist_ok=True)
    state_dict = {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    meta = dict(
        dataset_meta=_plain_meta(dataset_meta),
        exported_by='mmtolerant',
        **(extra_meta or {}))
    ckpt_path = osp.join(out_dir, EXPORT_CKPT)
    cfg_path = osp.join(out_dir, EXPORT_CFG)
    atomic_torch_save(dict(meta=meta, state_dict=state_dict), ckpt_path)
    model_cfg = plain_model_cfg(cfg)
    exported = dict(model=model_cfg, default_scope='mmpretrain')
    pipeline = test_pipeline(cfg)
    if pipeline is not None and _channels(model_cfg) == 1:
        # mmpretrain's inferencers (demo/image_demo.py) read an image file
        # in colour: 3 equal channels for a grey file. A one-channel model
        # takes the first, exactly its grey values (an average of three
        # rounds some down). mmcv's own transform, so stock mmpretrain runs
        # it; a one-channel array passes unchanged.
        pipeline.insert(0, dict(type='RandomGrayscale', prob=1.0,
                                keep_channels=False,
                                channel_weights=(1.0, 0.0, 0.0)))
    if pipeline is not None:
        # What mmpretrain's inferencers read: the test pipeline alone (no
        # dataset, so nothing of the training data is needed to predict).
        exported['test_dataloader'] = dict(dataset=dict(pipeline=pipeline))
    if plugin_modules(model_cfg):
        # A model built from the plugin's own modules (not only its
        # losses, which the export replaces) needs the plugin to be built.
        exported['custom_imports'] = dict(
            imports=['mmtolerant'], allow_failed_imports=False)
    plain = Config(exported)
    atomic_write_text(plain.pretty_text, cfg_path)
    return ckpt_path, cfg_path
