"""The frozen teacher of a distillation: a trained classifier that only
gives class scores, built from its config and checkpoint (or a model of
mmpretrain's zoo) and run on the student's preprocessed batch."""
import contextlib
import itertools
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmpretrain.registry import MODELS

from .teacher_source import (load_teacher_state, load_teacher_weights,
                             teacher_model_cfg, zoo_teacher)

TEACHER_AUTOCAST = {'bfloat16': torch.bfloat16, 'float16': torch.float16}


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


def num_classes_of(model: nn.Module) -> Optional[int]:
    """The classes a classifier predicts, when its head or backbone says."""
    for part in ('head', 'backbone'):
        n = getattr(getattr(model, part, None), 'num_classes', None)
        if isinstance(n, int):
            return n
    return None


def _set_layout(module: nn.Module, memory_format) -> None:
    """Put the 4-D parameters and buffers of ``module`` in ``memory_format``
    (``Module.to(memory_format=...)`` refuses a module holding 5-D ones)."""
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=memory_format)


class FrozenTeacher(nn.Module):
    """A trained classifier that gives a distillation its targets.

    Built from ``config`` (see :func:`teacher_model_cfg`) and loaded from
    ``checkpoint`` (see :func:`load_teacher_weights`), with every parameter
    frozen, and in eval mode for good: ``train()`` leaves it there. Called
    on an already preprocessed batch, it returns the teacher's class scores,
    computed under ``torch.inference_mode`` (no autograd bookkeeping) and
    given back as a normal tensor that a loss may save for its backward
    pass.

    A distiller holds it outside its own module tree, so that it is in no
    ``state_dict()``, optimizer or DDP bucket, and moves it along with its
    own ``_apply`` (``.to()``, ``.cuda()``).

    Args:
        config: The teacher's config: a file path, a config of an installed
            package as in a ``_base_`` (``'mmpretrain::resnet/
            resnet18_8xb16_cifar10.py'``), a Config or a model dict. None
            with ``model_name``.
        checkpoint (str): The teacher's weights, written by ``torch.save``
            (a state dict or an MMEngine checkpoint): a local file or an
            ``http(s)://`` URL, downloaded to torch's hub cache
            (``$TORCH_HOME/hub/checkpoints``, reused when a file of that
            name is there). Either is loaded weights-only: a file that would
            run code is refused. Optional with ``model_name``.
        cfg_options (dict, optional): Applied to the teacher's model config.
        teacher_autocast (str, optional): Run the forward pass under
            ``torch.autocast`` in ``'bfloat16'`` or ``'float16'`` even when
            the run itself is float32: cheaper on hardware with fast units
            for that type (no help where it is emulated; see
            ``benchmarks/README.md``), at the price of logits rounded to its
            precision; they come back in float32. Defaults to None: the
            teacher runs in the caller's precision (its AMP autocast, if
            any).
        teacher_compile (bool | dict): ``True`` or a dict of
            ``torch.compile`` arguments such as ``dict(mode='max-autotune')``:
            a call with ``compiled=True`` runs the forward pass compiled by
            ``torch.compile`` with inductor's ``freezing`` on (the frozen
            weights become constants: BatchNorm folded into the
            convolutions, weights pre-packed). The first calls pay the
            compilation (once more for a smaller last batch); the outputs
            equal the eager teacher's to float rounding.
            Defaults to False.
        teacher_channels_last (bool, optional): Keep the weights, and give
            the forward pass its input, in the channels-last memory layout
            (one copy of the batch per call): the layout that oneDNN's CPU
            convolutions and a GPU's tensor cores under mixed precision run
            fastest (see ``benchmarks/README.md``); the same outputs to
            float rounding. None (default): channels-last unless the first
            4-D forward pass fails in it (a model that ``.view()``-s a
            feature map, such as mmpretrain's ``LinearNeck`` on a 4-D map),
            which then runs again, and from then on, in NCHW (logged).
            True: channels-last or an error; False: NCHW.
        model_name (str, optional): Instead of ``config``, a model of
            mmpretrain's zoo by the name that ``mmpretrain.get_model`` takes
            (one of ``mmpretrain.list_models()``, e.g.
            ``'resnet18_8xb16_cifar10'``): its config, and unless
            ``checkpoint`` is given, its published weights (a URL, loaded
            as above, not by ``get_model``). Defaults to None.
        state_dict (dict, optional): The weights themselves, already in
            memory, instead of reading ``checkpoint`` (which then only names
            them in messages): how a snapshot of a running student becomes
            a teacher (``SnapshotGenerationsHook``). Defaults to None.
    """

    def __init__(self,
                 config=None,
                 checkpoint: Optional[str] = None,
                 cfg_options: Optional[dict] = None,
                 teacher_autocast: Optional[str] = None,
                 teacher_compile: Union[bool, dict] = False,
                 teacher_channels_last: Optional[bool] = None,
                 model_name: Optional[str] = None,
                 state_dict: Optional[dict] = None):
        super().__init__()
        check_teacher_options('FrozenTeacher', teacher_autocast,
                              teacher_compile, teacher_channels_last)
        if (config is None) == (model_name is None):
            raise ValueError(
                'the teacher needs exactly one of config and model_name, '
                f'got config={config!r}, model_name={model_name!r}')
        if model_name is not None:
            config, checkpoint = zoo_teacher(model_name, checkpoint)
        self.model = MODELS.build(teacher_model_cfg(config, cfg_options))
        if state_dict is not None:
            # Weights already in memory (a snapshot of a running student);
            # ``checkpoint`` only names them.
            load_teacher_state(self.model, state_dict,
                               f'teacher weights {checkpoint!r}')
        else:
            load_teacher_weights(self.model, checkpoint)
        self.requires_grad_(False)
        self.train(False)
        self.checkpoint = checkpoint
        self.teacher_autocast = teacher_autocast
        self.teacher_compile = teacher_compile
        self.teacher_channels_last = teacher_channels_last
        self._compiled = None
        # The layout in use; with None, until the first forward pass shows
        # whether the teacher runs in channels-last.
        self._channels_last = teacher_channels_last is not False
        self._layout_settled = teacher_channels_last is not None
        if self._channels_last:
            _set_layout(self.model, torch.channels_last)

    @classmethod
    def from_cfg(cls, cfg: dict, **options) -> 'FrozenTeacher':
        """The teacher of a distiller's ``teacher=dict(config, checkpoint,
        cfg_options=None)`` or ``teacher=dict(model_name, checkpoint=None,
        cfg_options=None)``, with ``options`` (``teacher_autocast``...)."""
        if not isinstance(cfg, dict) or not (
                'config' in cfg and 'checkpoint' in cfg
                or 'model_name' in cfg):
            raise ValueError('teacher must be a dict with `config` and '
                             '`checkpoint`, or with `model_name` (a model '
                             f'of mmpretrain.list_models()), got {cfg!r}')
        unknown = set(cfg) - {
            'config', 'checkpoint', 'cfg_options', 'model_name'}
        if unknown:
            raise ValueError(f'unknown teacher keys {sorted(unknown)} '
                             '(known: config, checkpoint, cfg_options, '
                             'model_name)')
        return cls(**cfg, **options)

    def train(self, mode: bool = True) -> 'FrozenTeacher':
        return super().train(False)

    @property
    def runs_channels_last(self) -> bool:
        """Whether the teacher (now) runs in the channels-last layout."""
        return self._channels_last

    def check_student(self, student: nn.Module) -> None:
        """Refuse a student this teacher cannot teach: other classes, or
        inputs normalised otherwise (the teacher reads the student's
        preprocessed batch)."""
        s_classes, t_classes = num_classes_of(student), num_classes_of(
            self.model)
        if s_classes is not None and t_classes is not None \
                and s_classes != t_classes:
            raise ValueError(
                f'the teacher ({self.checkpoint}) predicts {t_classes} '
                f'classes but the student predicts {s_classes}: they must '
                'match')
        s_pre, t_pre = student.data_preprocessor, self.model.data_preprocessor
        for attr in ('mean', 'std'):
            s_val, t_val = getattr(s_pre, attr, None), getattr(
                t_pre, attr, None)
            same = (s_val is None) == (t_val is None) and (
                s_val is None or s_val.shape == t_val.shape
                and torch.allclose(s_val.float(), t_val.float()))
            if not same:
                show = (lambda v: None if v is None else v.flatten().tolist())
                raise ValueError(
                    f'teacher and student normalise inputs differently: '
                    f'{attr} {show(t_val)} (teacher) vs {show(s_val)} '
                    '(student); the teacher sees the student\'s batch')

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.extract_feat(inputs))

    def forward(self, inputs: torch.Tensor,
                compiled: bool = False) -> torch.Tensor:
        """The class scores of a preprocessed batch (float32 with
        ``teacher_autocast``); ``compiled``: by the ``torch.compile``-d
        forward pass (see ``teacher_compile``)."""
        autocast = contextlib.nullcontext()
        if self.teacher_autocast is not None:
            autocast = torch.autocast(
                device_type=inputs.device.type,
                dtype=TEACHER_AUTOCAST[self.teacher_autocast])
        forward, freezing = self._logits, contextlib.nullcontext()
        if compiled:
            if self._compiled is None:
                options = {} if self.teacher_compile is True \
                    else dict(self.teacher_compile)
                self._compiled = torch.compile(self._logits, **options)
            forward = self._compiled
            # Read when the graph compiles (lazily, at the first call);
            # patched here only, so a compiled student is not frozen too.
            import torch._inductor.config as inductor_config
            freezing = inductor_config.patch(freezing=True)
        with torch.inference_mode(), autocast, freezing:
            logits = self._in_layout(forward, inputs)
        if self.teacher_autocast is not None:
            logits = logits.float()
        # An inference tensor cannot be saved for a backward pass.
        return logits.clone() if logits.is_inference() else logits

    def _in_layout(self, forward, inputs: torch.Tensor) -> torch.Tensor:
        """``forward(inputs)`` in the teacher's memory layout."""
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
                    'teacher_channels_last=True but the teacher\'s forward '
                    'pass fails in channels-last '
                    f'({e}); set teacher_channels_last=None or False') from e
            # If the layout was not the cause, the same error comes again.
            self._channels_last = False
            with torch.inference_mode(False):
                _set_layout(self.model, torch.contiguous_format)
            print_log(
                '[mmtolerant] the teacher runs in NCHW: its forward pass '
                f'fails in channels-last ({str(e).splitlines()[0][:200]})',
                logger='current')
            logits = forward(inputs)
        self._layout_settled = True
        return logits
