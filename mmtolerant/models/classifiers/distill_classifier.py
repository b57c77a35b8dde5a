import contextlib
import copy
import functools
import itertools
import os
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from mmtolerant.utils.checkpoint import (CheckpointLoadError,
                                         extract_state_dict, safe_torch_load)
from ..losses.utils import check_in_range
from .teacher_cache import TeacherOutputCache, teacher_cache_from_cfg

# Arguments of DistillImageClassifier that a plain ImageClassifier lacks.
DISTILL_ONLY_KEYS = ('teacher', 'lam', 'distill_loss', 'eval_teacher',
                     'teacher_cache', 'teacher_autocast', 'teacher_compile',
                     'teacher_channels_last')
TEACHER_AUTOCAST = {'bfloat16': torch.bfloat16, 'float16': torch.float16}


def plain_classifier_cfg(model_cfg: Union[dict, ConfigDict]) -> ConfigDict:
    """The stock ``ImageClassifier`` config of a (distillation) model config.

    A :class:`DistillImageClassifier` config loses its teacher and
    distillation settings; the rest (backbone, neck, head, preprocessor)
    describes the student exactly, and its weights carry the same names.
    """
    cfg = ConfigDict(copy.deepcopy(dict(model_cfg)))
    if cfg.get('type') in ('DistillImageClassifier',
                           'mmtolerant.DistillImageClassifier',
                           DistillImageClassifier):
        cfg['type'] = 'ImageClassifier'
        for key in DISTILL_ONLY_KEYS:
            cfg.pop(key, None)
    return cfg


def _model_cfg_of(config) -> ConfigDict:
    """The model config (with its preprocessor) from a path, Config or dict."""
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'teacher config {path!r} does not exist')
        config = Config.fromfile(path)
    if isinstance(config, (Config, dict)) and 'model' in config:
        model = ConfigDict(copy.deepcopy(dict(config['model'])))
        if config.get('data_preprocessor') is not None:
            model.setdefault('data_preprocessor',
                             copy.deepcopy(config['data_preprocessor']))
        return model
    if isinstance(config, dict) and 'type' in config:
        return ConfigDict(copy.deepcopy(dict(config)))
    raise TypeError('teacher.config must be a config file path, a Config '
                    'with a `model` field, or a model dict with a `type`; '
                    f'got {type(config).__name__}')


def _num_classes(model: nn.Module) -> Optional[int]:
    for part in ('head', 'backbone'):
        n = getattr(getattr(model, part, None), 'num_classes', None)
        if isinstance(n, int):
            return n
    return None


def build_frozen_teacher(config, checkpoint: str,
                         cfg_options: Optional[dict] = None) -> nn.Module:
    """Build a classifier from its config and load ``checkpoint`` strictly.

    The checkpoint is read with ``weights_only=True`` (nothing in it can
    execute code). The returned model is in eval mode with every parameter
    frozen.
    """
    model_cfg = _model_cfg_of(config)
    if cfg_options:
        # Keys are relative to the model, e.g. {'head.num_classes': 100}.
        holder = Config(dict(model=model_cfg))
        holder.merge_from_dict(
            {f'model.{k}': v
             for k, v in dict(cfg_options).items()})
        model_cfg = holder.model
    model_cfg = plain_classifier_cfg(model_cfg)
    # Weights come from the checkpoint: skip pretrained downloads.
    model_cfg.pop('init_cfg', None)
    model_cfg.pop('pretrained', None)
    teacher = MODELS.build(model_cfg)

    if checkpoint is None:
        raise CheckpointLoadError('teacher.checkpoint is required: a frozen '
                                  'teacher without trained weights teaches '
                                  'nothing')
    state_dict = extract_state_dict(safe_torch_load(checkpoint), checkpoint)
    try:
        incompatible = teacher.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        details = '; '.join(str(e).splitlines()[1:4])
        raise CheckpointLoadError(
            f'teacher checkpoint {checkpoint!r} does not match the teacher '
            f'config: {details}') from None
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise CheckpointLoadError(
            f'teacher checkpoint {checkpoint!r} does not match the teacher '
            f'config: missing keys {incompatible.missing_keys[:5]}, '
            f'unexpected keys {incompatible.unexpected_keys[:5]}')
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_teacher_options(owner: str, teacher_autocast=None,
                          teacher_compile=False,
                          teacher_channels_last=None) -> None:
    """Refuse a bad ``teacher_autocast`` / ``teacher_compile`` /
    ``teacher_channels_last`` with an error that starts with ``owner`` (the
    classifier's own check, also run by a chain on its settings)."""
    if teacher_autocast is not None \
            and teacher_autocast not in TEACHER_AUTOCAST:
        raise ValueError(
            f"{owner}: teacher_autocast must be None, 'bfloat16' or "
            f"'float16', got {teacher_autocast!r}")
    if not isinstance(teacher_compile, (bool, dict)):
        raise ValueError(
            f'{owner}: teacher_compile must be True, False or a dict of '
            f'torch.compile arguments, got {teacher_compile!r}')
    if teacher_channels_last is not None and not isinstance(
            teacher_channels_last, bool):
        raise ValueError(
            f'{owner}: teacher_channels_last must be None, True or False, '
            f'got {teacher_channels_last!r}')


def _set_layout(module: nn.Module, memory_format) -> None:
    """Put the 4-D parameters and buffers of ``module`` in ``memory_format``
    (``Module.to(memory_format=...)`` refuses a module holding 5-D ones)."""
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=memory_format)


@MODELS.register_module()
class DistillImageClassifier(ImageClassifier):
    r"""An image classifier (the student) trained with a frozen teacher.

    The student is any mmpretrain ``ImageClassifier`` (``backbone``,
    ``neck``, ``head``, ``data_preprocessor``, ``train_cfg`` exactly as
    there). Its loss is

    .. math::
        L_S = \lambda \cdot L_{head}(y, f_S)
              + (1-\lambda) \cdot \tau^2 KL(f_T^{\tau} \| f_S^{\tau})

    with :math:`L_{head}` the head's own loss (cross-entropy in the paper,
    or TSD when the student is itself trained to be a tolerant teacher).
    The terms are logged separately as ``loss_cls`` and ``loss_kd``.

    The teacher sees exactly the student's preprocessed batch (after the
    data preprocessor and batch augments such as Mixup). It is held outside
    the module tree: it is not in ``state_dict()`` (so a checkpoint of this
    model is a plain student checkpoint), not in ``parameters()`` (so never
    in the optimizer nor in DDP's gradient buckets), never re-initialised by
    ``init_weights``, always in eval mode and run under
    ``torch.inference_mode``. It moves with the model (``.to()``,
    ``.cuda()``) and runs in the run's autocast precision (or in
    ``teacher_autocast``).

    Args:
        backbone, neck, head, pretrained, train_cfg, data_preprocessor,
        init_cfg: As in mmpretrain's ``ImageClassifier``.
        teacher (dict): ``config`` (path, Config, or model dict) and
            ``checkpoint`` (path) of the teacher, optionally ``cfg_options``
            applied to the teacher's model config. Same classes as the
            student, any architecture.
        lam (float): :math:`\lambda` in [0, 1], the weight of the head's
            loss; the distillation loss gets :math:`1-\lambda`.
            Defaults to 0.5.
        distill_loss (dict): The distillation loss, called as
            ``loss(student_logits, teacher_logits)``. Its ``loss_weight`` is
            set to ``1 - lam``. Defaults to ``dict(type='DistillKLLoss',
            tau=1.0)``.
        eval_teacher (bool): Also store the teacher's prediction on each
            validation/test sample as ``teacher_pred_score``, which the
            ``TeacherAccuracy`` metric reads. Defaults to True.
        teacher_cache (dict, optional): Replay the teacher's training-set
            logits from memory instead of running the teacher again (see
            :class:`TeacherOutputCache`): ``dict()``,
            ``dict(dtype='float16')``, and ``views=V`` for a random training
            pipeline made of V fixed views per sample (the dataset wrapped in
            ``AugmentationViews``, sampled by ``AugmentationViewSampler``).
            Without ``views``, only for deterministic training inputs; a
            sample whose input changed stops training with an error; batch
            augments are refused. Defaults to None (live teacher at every
            step).
        teacher_autocast (str, optional): Run the teacher's forward pass
            under ``torch.autocast`` in ``'bfloat16'`` or ``'float16'``
            even when the run itself is float32: about half the teacher's
            cost on CPUs with bf16 units, at the price of teacher logits
            rounded to about 3 significant digits (the soft targets move
            by ~1e-3). Defaults to None: the teacher runs in the run's own
            precision (its AMP autocast, if any).
        teacher_compile (bool | dict): Compile the teacher's training-time
            forward pass with ``torch.compile`` (``True``, or a dict of
            ``torch.compile`` arguments such as ``dict(mode='max-autotune')``),
            with inductor's ``freezing`` on (the frozen weights become
            constants: BatchNorm folded into the convolutions, weights
            pre-packed). The first steps pay the compilation (tens of
            seconds; once more for a smaller last batch); the outputs equal
            the eager teacher's to float rounding. Validation keeps the
            eager teacher. Defaults to False.
        teacher_channels_last (bool, optional): Keep the teacher's weights,
            and give it its input, in the channels-last memory layout (one
            copy of the batch per step): the layout that oneDNN's CPU
            convolutions and a GPU's tensor cores under mixed precision run
            fastest (measured on a 2-core CPU: the teacher's forward pass
            takes 21-23% less time for a CIFAR ResNet-18); the same outputs
            to float rounding. None (default): channels-last unless the
            teacher's first forward pass fails in it (a model that
            ``.view()``-s a feature map, such as mmpretrain's ``LinearNeck``
            on a 4-D map), which then runs again, and from then on, in NCHW
            (logged). True: channels-last or an error; False: NCHW.
    """

    def __init__(self,
                 backbone: dict,
                 teacher: dict,
                 lam: float = 0.5,
                 distill_loss: dict = dict(type='DistillKLLoss', tau=1.0),
                 eval_teacher: bool = True,
                 teacher_cache: Optional[dict] = None,
                 teacher_autocast: Optional[str] = None,
                 teacher_compile: Union[bool, dict] = False,
                 teacher_channels_last: Optional[bool] = None,
                 neck: Optional[dict] = None,
                 head: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 train_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(
            backbone=backbone,
            neck=neck,
            head=head,
            pretrained=pretrained,
            train_cfg=train_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        if not self.with_head:
            raise ValueError('DistillImageClassifier needs a head: the '
                             'student must produce class scores')
        self.lam = check_in_range('DistillImageClassifier', 'lam', lam, 0.0,
                                  1.0)
        self.eval_teacher = bool(eval_teacher)
        self.teacher_cache = self._build_cache(teacher_cache)
        check_teacher_options('DistillImageClassifier', teacher_autocast,
                              teacher_compile, teacher_channels_last)
        self.teacher_autocast = teacher_autocast
        self.teacher_compile = teacher_compile
        self._compiled_teacher = None
        self.teacher_channels_last = teacher_channels_last
        # The layout in use; with None, until the first forward pass shows
        # whether the teacher runs in channels-last.
        self._channels_last = teacher_channels_last is not False
        self._layout_settled = teacher_channels_last is not None

        if isinstance(distill_loss, dict):
            distill_loss = dict(distill_loss)
            given = distill_loss.get('loss_weight')
            if given is not None and abs(float(given) -
                                         (1 - self.lam)) > 1e-12:
                raise ValueError(
                    f'DistillImageClassifier: distill_loss.loss_weight='
                    f'{given} contradicts lam={self.lam} (the weight is '
                    f'1 - lam = {1 - self.lam:g}); set lam only')
            distill_loss['loss_weight'] = 1.0 - self.lam
            distill_loss = MODELS.build(distill_loss)
        self.distill_loss = distill_loss

        if not isinstance(teacher, dict) or 'config' not in teacher \
                or 'checkpoint' not in teacher:
            raise ValueError('DistillImageClassifier: teacher must be a '
                             'dict with `config` and `checkpoint`, got '
                             f'{teacher!r}')
        unknown = set(teacher) - {'config', 'checkpoint', 'cfg_options'}
        if unknown:
            raise ValueError('DistillImageClassifier: unknown teacher '
                             f'keys {sorted(unknown)}')
        frozen = build_frozen_teacher(teacher['config'],
                                      teacher['checkpoint'],
                                      teacher.get('cfg_options'))
        self._check_teacher(frozen, teacher['checkpoint'])
        if self._channels_last:
            _set_layout(frozen, torch.channels_last)
        # Not a submodule on purpose: see the class docstring.
        object.__setattr__(self, 'teacher', frozen)
        self.teacher_checkpoint = teacher['checkpoint']
        print_log(
            f'[mmtolerant] frozen teacher {type(frozen.backbone).__name__} '
            f'loaded from {teacher["checkpoint"]} (lam={self.lam:g})',
            logger='current')

    def _build_cache(self, cfg) -> Optional[TeacherOutputCache]:
        if cfg is None or cfg is False:
            return None
        cache = teacher_cache_from_cfg(cfg, 'DistillImageClassifier')
        augments = getattr(self.data_preprocessor, 'batch_augments', None)
        if augments is not None:
            raise ValueError(
                'DistillImageClassifier: teacher_cache replays one teacher '
                'output per sample, but the data preprocessor has batch '
                f'augments ({type(augments).__name__}) that make every '
                'batch new; remove teacher_cache or the batch augments')
        return cache

    def _teacher_targets(self, inputs: torch.Tensor,
                         data_samples: List[DataSample]) -> torch.Tensor:
        teacher = self.teacher_logits
        if self.teacher_compile is not False:
            teacher = functools.partial(self.teacher_logits, compiled=True)
        cache = self.teacher_cache
        if cache is None:
            return teacher(inputs)
        return cache.targets(cache.keys(data_samples), inputs, teacher)

    def _teacher_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.teacher.head(self.teacher.extract_feat(inputs))

    def _check_teacher(self, teacher: nn.Module, checkpoint: str) -> None:
        s_classes, t_classes = _num_classes(self), _num_classes(teacher)
        if s_classes is not None and t_classes is not None \
                and s_classes != t_classes:
            raise ValueError(
                f'the teacher ({checkpoint}) predicts {t_classes} classes '
                f'but the student predicts {s_classes}: they must match')
        # The teacher reads the student's preprocessed batch, so both must
        # have been trained on identically normalised inputs.
        s_pre, t_pre = self.data_preprocessor, teacher.data_preprocessor
        for attr in ('mean', 'std'):
            s_val, t_val = getattr(s_pre, attr, None), getattr(
                t_pre, attr, None)
            if (s_val is None) != (t_val is None) or (
                    s_val is not None and
                (s_val.shape != t_val.shape
                 or not torch.allclose(s_val.float(), t_val.float()))):
                show = (lambda v: None if v is None else v.flatten().tolist())
                raise ValueError(
                    f'teacher and student normalise inputs differently: '
                    f'{attr} {show(t_val)} (teacher) vs {show(s_val)} '
                    '(student); the teacher sees the student\'s batch')

    # --- keep the hidden teacher on the model's device and in eval mode ---
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if 'teacher' in self.__dict__:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if 'teacher' in self.__dict__:
            self.teacher.train(False)
        return self

    def teacher_logits(self, inputs: torch.Tensor,
                       compiled: bool = False) -> torch.Tensor:
        """The frozen teacher's class scores on an already preprocessed
        batch (float32 when ``teacher_autocast`` is set); ``compiled``: by
        the ``torch.compile``-d teacher (see ``teacher_compile``)."""
        autocast = contextlib.nullcontext()
        if self.teacher_autocast is not None:
            autocast = torch.autocast(
                device_type=inputs.device.type,
                dtype=TEACHER_AUTOCAST[self.teacher_autocast])
        forward = self._teacher_forward
        freezing = contextlib.nullcontext()
        if compiled:
            if self._compiled_teacher is None:
                options = {} if self.teacher_compile is True \
                    else dict(self.teacher_compile)
                self._compiled_teacher = torch.compile(
                    self._teacher_forward, **options)
            forward = self._compiled_teacher
            # Read when the graph compiles (lazily, at the first call);
            # patched here only, so a compiled student is not frozen too.
            import torch._inductor.config as inductor_config
            freezing = inductor_config.patch(freezing=True)
        # inference_mode: no autograd bookkeeping at all for the teacher.
        with torch.inference_mode(), autocast, freezing:
            logits = self._forward_in_layout(forward, inputs)
        if self.teacher_autocast is not None:
            logits = logits.float()
        # A normal tensor again (an inference tensor cannot be saved for
        # the student's backward pass).
        return logits.clone()

    def _forward_in_layout(self, forward, inputs: torch.Tensor
                           ) -> torch.Tensor:
        """``forward(inputs)`` in the teacher's memory layout (see
        ``teacher_channels_last``)."""
        if not self._channels_last or inputs.dim() != 4:
            return forward(inputs)
        nhwc = inputs.contiguous(memory_format=torch.channels_last)
        if self._layout_settled and self.teacher_channels_last is None:
            return forward(nhwc)
        try:
            logits = forward(nhwc)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            if self.teacher_channels_last:
                raise RuntimeError(
                    'DistillImageClassifier: teacher_channels_last=True but '
                    'the teacher\'s forward pass fails in channels-last '
                    f'({e}); set teacher_channels_last=None or False') from e
            # If the layout was not the cause, the same error comes again.
            self._channels_last = False
            with torch.inference_mode(False):
                _set_layout(self.teacher, torch.contiguous_format)
            print_log(
                '[mmtolerant] the teacher runs in NCHW: its forward pass '
                f'fails in channels-last ({str(e).splitlines()[0][:200]})',
                logger='current')
            logits = forward(inputs)
        self._layout_settled = True
        return logits

    def loss(self, inputs: torch.Tensor,
             data_samples: List[DataSample]) -> dict:
        feats = self.extract_feat(inputs)
        if hasattr(self.head, '_get_loss'):
            cls_score = self.head(feats)
            head_losses = self.head._get_loss(cls_score, data_samples)
        else:  # a head outside mmpretrain's ClsHead family
            head_losses = self.head.loss(feats, data_samples)
            cls_score = self.head(feats)
        t_logits = self._teacher_targets(inputs, data_samples)
        if t_logits.shape != cls_score.shape:
            raise ValueError(
                f'teacher logits {tuple(t_logits.shape)} and student logits '
                f'{tuple(cls_score.shape)} differ: teacher and student must '
                'predict the same classes')

        losses = dict()
        for name, value in head_losses.items():
            losses['loss_cls' if name == 'loss' else name] = \
                self.lam * value if name == 'loss' else value
        losses['loss_kd'] = self.distill_loss(cls_score, t_logits)
        return losses

    def predict(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                **kwargs) -> List[DataSample]:
        predictions = super().predict(inputs, data_samples, **kwargs)
        if self.eval_teacher:
            scores = F.softmax(self.teacher_logits(inputs).float(), dim=1)
            for sample, score in zip(predictions, scores):
                sample.set_field(score, 'teacher_pred_score')
        return predictions
