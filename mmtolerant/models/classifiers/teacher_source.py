"""Where a frozen teacher comes from: its model config (a file, a config
of an installed package, a Config or a model dict, or a model of
mmpretrain's zoo) and its weights (a local file or an http(s) URL, loaded
weights-only, or a state dict in memory), checked key by key."""
import copy
import os
from typing import Optional, Tuple, Union

import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.runner.checkpoint import _load_checkpoint

from mmtolerant.utils.checkpoint import (CheckpointLoadError,
                                         extract_state_dict)
from .plain_classifier import plain_classifier_cfg


def teacher_config_file(config: Union[str, os.PathLike]) -> str:
    """The file of a teacher config path: a local file, or a config of an
    installed package given as in a ``_base_``
    (``'mmpretrain::resnet/resnet18_8xb16_cifar10.py'``), which is found
    where MMEngine finds it there. (``mmengine.hub.get_config`` finds it
    the same way, but pip-installs a package that is missing.)"""
    path = os.fspath(config)
    if '::' not in path:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'teacher config {path!r} does not exist')
        return path
    try:
        return Config._get_cfg_path(path, '')[0]
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f'teacher config {path!r} is not a config of the installed '
            f'package ({e})') from None
    except (ValueError, AssertionError, KeyError, ImportError) as e:
        raise ValueError(
            f'teacher config {path!r} is not a package config MMEngine can '
            f'find ({e}); expected e.g. '
            "'mmpretrain::resnet/resnet18_8xb16_cifar10.py'") from None


def zoo_teacher(model_name: str,
                checkpoint: Optional[str] = None) -> Tuple[Config, str]:
    """The config of the model ``model_name`` of mmpretrain's zoo (a name
    of ``mmpretrain.list_models()``, as ``mmpretrain.get_model`` takes it)
    and its checkpoint: ``checkpoint`` when given, else the URL of the
    model's published weights, read from mmpretrain's ``ModelHub``."""
    from mmpretrain.apis.model import ModelHub
    if not isinstance(model_name, str):
        raise TypeError('teacher.model_name must be a model name of '
                        f'mmpretrain.list_models(), got {model_name!r}')
    try:
        metainfo = ModelHub.get(model_name)
    except ValueError:
        raise ValueError(
            f'teacher.model_name {model_name!r} is not a model of '
            "mmpretrain's zoo; mmpretrain.list_models() lists them, "
            "e.g. mmpretrain.list_models('*cifar*')") from None
    if checkpoint is None:
        checkpoint = metainfo.weights
        if checkpoint is None:
            raise CheckpointLoadError(
                f'teacher.model_name {model_name!r} has no published '
                'weights in mmpretrain\'s zoo: give teacher.checkpoint')
    return metainfo.config, checkpoint


def teacher_model_cfg(config, cfg_options: Optional[dict] = None
                      ) -> ConfigDict:
    """The teacher's model config from a config path (see
    :func:`teacher_config_file`), a Config with a ``model`` (and its
    ``data_preprocessor``) or a model dict, with ``cfg_options`` (keys
    relative to the model, e.g. ``{'head.num_classes': 100}``) merged in. A
    distillation config gives its student alone, and nothing pretrained is
    downloaded: the weights come from the teacher's checkpoint."""
    if isinstance(config, (str, os.PathLike)):
        config = Config.fromfile(teacher_config_file(config))
    if isinstance(config, (Config, dict)) and 'model' in config:
        model = ConfigDict(copy.deepcopy(dict(config['model'])))
        if config.get('data_preprocessor') is not None:
            model.setdefault('data_preprocessor',
                             copy.deepcopy(config['data_preprocessor']))
    elif isinstance(config, dict) and 'type' in config:
        model = ConfigDict(copy.deepcopy(dict(config)))
    else:
        raise TypeError('teacher.config must be a config file path, a '
                        'Config with a `model` field, or a model dict with '
                        f'a `type`; got {type(config).__name__}')
    if cfg_options:
        holder = Config(dict(model=model))
        holder.merge_from_dict(
            {f'model.{k}': v
             for k, v in dict(cfg_options).items()})
        model = holder.model
    model = plain_classifier_cfg(model)
    model.pop('init_cfg', None)
    model.pop('pretrained', None)
    return model


def load_teacher_weights(model: nn.Module, checkpoint) -> None:
    """Load ``checkpoint``, a local file or an http(s) URL, into ``model``,
    every weight of it and nothing else.

    The file is read by MMEngine's checkpoint loader, which ``import
    mmtolerant`` makes weights-only (nothing in the file can execute code);
    a URL is downloaded to torch's hub cache first (``$TORCH_HOME/hub/
    checkpoints``, as MMEngine does) and read the same way. The strict
    comparison is ours rather than ``load_checkpoint(strict=True)``'s,
    which raises on rank 0 only and lets other ranks go on with a
    half-loaded teacher.
    """
    if checkpoint is None:
        raise CheckpointLoadError('teacher.checkpoint is required: a frozen '
                                  'teacher without trained weights teaches '
                                  'nothing')
    is_url = isinstance(checkpoint, str) \
        and checkpoint.startswith(('http://', 'https://'))
    if not is_url and (not isinstance(checkpoint, (str, os.PathLike))
                       or not os.path.isfile(checkpoint)):
        raise CheckpointLoadError(
            f'teacher checkpoint {checkpoint!r} does not exist or is not a '
            'file (a local file or an http(s) URL was expected)')
    checkpoint = os.fspath(checkpoint)
    load_teacher_state(
        model,
        extract_state_dict(
            _load_checkpoint(checkpoint, map_location='cpu',
                             logger='current'), checkpoint),
        f'teacher checkpoint {checkpoint!r}')


def load_teacher_state(model: nn.Module, state_dict: dict,
                       source: str) -> None:
    """Load ``state_dict`` into ``model``: every weight of it and nothing
    else, or an error that names ``source`` and the keys that differ."""
    try:
        incompatible = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        details = '; '.join(str(e).splitlines()[1:4])
        raise CheckpointLoadError(
            f'{source} does not match the teacher config: {details}'
        ) from None
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise CheckpointLoadError(
            f'{source} does not match the teacher config: missing keys '
            f'{incompatible.missing_keys[:5]}, unexpected keys '
            f'{incompatible.unexpected_keys[:5]}')
