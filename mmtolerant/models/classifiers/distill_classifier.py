import logging
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..losses.utils import check_in_range
from .ensemble_teacher import build_teacher
from .frozen_teacher import check_teacher_options
from .teacher_cache import TeacherOutputCache, teacher_cache_from_cfg


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

    The teacher (a :class:`FrozenTeacher`, ``frozen_teacher``; its
    classifier is ``teacher``) sees exactly the student's preprocessed batch
    (after the data preprocessor and batch augments such as Mixup). It is
    held outside the module tree: it is not in ``state_dict()`` (so a
    checkpoint of this model is a plain student checkpoint), not in
    ``parameters()`` (so never in the optimizer nor in DDP's gradient
    buckets), never re-initialised by ``init_weights``, always in eval mode
    and run under ``torch.inference_mode``. It moves with the model
    (``.to()``, ``.cuda()``) and runs in the run's autocast precision (or
    in ``teacher_autocast``).

    Args:
        backbone, neck, head, pretrained, train_cfg, data_preprocessor,
        init_cfg: As in mmpretrain's ``ImageClassifier``.
        teacher (dict): ``config`` (path, ``'mmpretrain::...'`` config,
            Config, or model dict) and ``checkpoint`` (path or http(s) URL,
            loaded weights-only) of the teacher, or ``model_name`` (a model
            of ``mmpretrain.list_models()``: its config, and its published
            weights unless ``checkpoint`` is given); optionally
            ``cfg_options`` applied to the teacher's model config. Same
            classes as the student, any architecture. See
            :class:`FrozenTeacher`. Or ``members=[teacher dicts]``: an
            :class:`EnsembleTeacher` (the members' average prediction). Or
            None: no teacher yet, until :meth:`set_teacher` gives one (as
            ``SnapshotGenerationsHook`` does at the end of each cycle);
            meanwhile the loss is the head's alone, at full weight, as a
            chain's patriarch trains.
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
            logits from memory instead of running the teacher again:
            ``dict()``, ``dict(dtype='float16')``, ``dict(views=V)``,
            ``dict(topk=k)`` (FKD's top-k soft labels, for tau 1),
            ``dict(shared=...)`` (one copy per node under DDP, by default)
            (see :class:`TeacherOutputCache` for what each replays, costs
            and refuses; batch augments are refused). Defaults to None
            (live teacher at every step).
        teacher_autocast (str, optional): The teacher's precision, None
            (default: the run's own) or ``'bfloat16'`` / ``'float16'``.
        teacher_compile (bool | dict): Compile the teacher's training-time
            forward pass (validation keeps the eager teacher). Defaults to
            False.
        teacher_channels_last (bool, optional): The teacher's memory
            layout: None (default) channels-last unless the teacher fails
            in it, True channels-last, False NCHW.

        The last three are :class:`FrozenTeacher`'s, which says what each
        does and costs.
    """

    def __init__(self,
                 backbone: dict,
                 teacher: Optional[dict] = None,
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
        self.teacher_channels_last = teacher_channels_last
        self.distill_loss = self._build_distill_loss(distill_loss)
        self._check_cache_temperature()

        object.__setattr__(self, 'frozen_teacher', None)
        if teacher is not None:
            self.set_teacher(build_teacher(
                teacher,
                teacher_autocast=teacher_autocast,
                teacher_compile=teacher_compile,
                teacher_channels_last=teacher_channels_last))

    def set_teacher(self, frozen: Optional[nn.Module]) -> None:
        """Teach from now on with ``frozen`` (a :class:`FrozenTeacher` or
        :class:`EnsembleTeacher`, moved to this model's device), or with
        None from the head's loss alone. A teacher cache is emptied: it
        held the previous teacher's outputs."""
        if frozen is not None:
            frozen.check_student(self)
            param = next(self.parameters(), None)
            if param is not None:
                frozen.to(param.device)
        if self.teacher_cache is not None:
            self.teacher_cache.clear()
        # Not a submodule on purpose: see the class docstring.
        object.__setattr__(self, 'frozen_teacher', frozen)
        if frozen is not None:
            print_log(
                '[mmtolerant] frozen teacher '
                f'{type(frozen.model.backbone).__name__} loaded from '
                f'{frozen.checkpoint} (lam={self.lam:g})',
                logger='current')

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The teacher's classifier (frozen, outside the module tree), or
        None without a teacher."""
        if self.frozen_teacher is None:
            return None
        return self.frozen_teacher.model

    def _build_distill_loss(self, cfg) -> nn.Module:
        if not isinstance(cfg, dict):
            return cfg
        cfg = dict(cfg)
        given = cfg.get('loss_weight')
        if given is not None and abs(float(given) - (1 - self.lam)) > 1e-12:
            raise ValueError(
                f'DistillImageClassifier: distill_loss.loss_weight={given} '
                f'contradicts lam={self.lam} (the weight is 1 - lam = '
                f'{1 - self.lam:g}); set lam only')
        cfg['loss_weight'] = 1.0 - self.lam
        return MODELS.build(cfg)

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

    def _check_cache_temperature(self) -> None:
        tau = getattr(self.distill_loss, 'tau', 1.0)
        if self.teacher_cache is not None and \
                self.teacher_cache.topk is not None and tau != 1:
            # Not refused: with few classes it may do (measured at tau 4
            # with 10 classes: the gradient off by 10% for k = 5).
            print_log(
                f'[mmtolerant] teacher_cache.topk={self.teacher_cache.topk} '
                f'with distill_loss.tau={tau:g}: top-k targets keep the '
                'teacher\'s probabilities at temperature 1; at higher '
                'temperatures the classes outside the top k carry much of '
                'the mass and their spread-out replacement changes the '
                'loss (measured with 1000 classes at tau 4: the gradient '
                'off by 36-118%, benchmarks/README.md)',
                logger='current', level=logging.WARNING)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        # Built after the student (and None while there is no teacher).
        if self.__dict__.get('frozen_teacher') is not None:
            self.frozen_teacher._apply(fn, *args, **kwargs)
        return self

    def teacher_logits(self, inputs: torch.Tensor,
                       compiled: bool = False) -> torch.Tensor:
        """The frozen teacher's class scores on an already preprocessed
        batch (see :meth:`FrozenTeacher.forward`)."""
        return self.frozen_teacher(inputs, compiled)

    def _teacher_targets(self, inputs: torch.Tensor,
                         data_samples: List[DataSample]) -> torch.Tensor:
        compiled = self.teacher_compile is not False
        if self.teacher_cache is None:
            return self.teacher_logits(inputs, compiled)
        return self.teacher_cache.targets(
            self.teacher_cache.keys(data_samples), inputs,
            lambda batch: self.teacher_logits(batch, compiled))

    def loss(self, inputs: torch.Tensor,
             data_samples: List[DataSample]) -> dict:
        feats = self.extract_feat(inputs)
        if hasattr(self.head, '_get_loss'):
            cls_score = self.head(feats)
            head_losses = self.head._get_loss(cls_score, data_samples)
        else:  # a head outside mmpretrain's ClsHead family
            head_losses = self.head.loss(feats, data_samples)
            cls_score = self.head(feats)
        if self.frozen_teacher is None:  # no teacher yet: the head alone
            return {('loss_cls' if name == 'loss' else name): value
                    for name, value in head_losses.items()}
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
        if self.eval_teacher and self.frozen_teacher is not None:
            scores = F.softmax(self.teacher_logits(inputs).float(), dim=1)
            for sample, score in zip(predictions, scores):
                sample.set_field(score, 'teacher_pred_score')
        return predictions
