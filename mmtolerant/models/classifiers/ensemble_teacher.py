"""A teacher made of several frozen teachers (earlier generations of a
chain): its class scores are their average prediction; and the builder
that gives a distiller its teacher, one or an ensemble."""
import math
from typing import Sequence

import torch
import torch.nn as nn

from .frozen_teacher import FrozenTeacher, num_classes_of


class EnsembleTeacher(nn.Module):
    r"""Several frozen teachers as one: the average of their predictions.

    Its class scores are the log of the members' average softmax output,

    .. math::
        z = \log \frac{1}{n} \sum_{i=1}^{n} \mathrm{softmax}(z_i),

    so that :math:`\mathrm{softmax}(z)` is the ensemble's prediction: a
    distillation loss at temperature 1 trains towards it exactly; at
    temperature :math:`\tau`, towards :math:`\bar p^{1/\tau}` renormalised
    (the average prediction, softened or sharpened). Each member is a
    :class:`FrozenTeacher` (frozen, eval mode, weights-only loading, its
    own precision, compilation and memory layout); a batch costs one
    forward pass per member, which a teacher cache pays once per sample.

    Args:
        members (Sequence[dict]): The members' ``teacher`` dicts
            (``config`` and ``checkpoint``, or ``model_name``; see
            :class:`FrozenTeacher`). At least one.
        **options: ``teacher_autocast``, ``teacher_compile``,
            ``teacher_channels_last``, given to every member.
    """

    def __init__(self, members: Sequence[dict], **options):
        super().__init__()
        if isinstance(members, (str, dict)) or not isinstance(
                members, Sequence) or not members:
            raise ValueError('teacher.members must be a non-empty list of '
                             'teacher dicts (config and checkpoint), got '
                             f'{members!r}')
        self.members = nn.ModuleList(
            FrozenTeacher.from_cfg(member, **options) for member in members)
        classes = {num_classes_of(m.model) for m in self.members} - {None}
        if len(classes) > 1:
            raise ValueError('the members of an ensemble teacher predict '
                             f'different numbers of classes: {classes}')
        self.train(False)

    @property
    def model(self) -> nn.Module:
        """The first member's classifier (the ensemble's class count and
        input normalisation, which every member shares)."""
        return self.members[0].model

    @property
    def checkpoint(self) -> str:
        paths = [m.checkpoint for m in self.members]
        return f'{len(paths)} members: ' + ', '.join(map(str, paths))

    def train(self, mode: bool = True) -> 'EnsembleTeacher':
        return super().train(False)

    @property
    def runs_channels_last(self) -> bool:
        return all(m.runs_channels_last for m in self.members)

    def check_student(self, student: nn.Module) -> None:
        for member in self.members:
            member.check_student(student)

    def forward(self, inputs: torch.Tensor,
                compiled: bool = False) -> torch.Tensor:
        """The ensemble's class scores (float32) of a preprocessed batch."""
        log_probs = torch.stack([
            torch.log_softmax(m(inputs, compiled=compiled).float(), dim=1)
            for m in self.members
        ])
        return torch.logsumexp(log_probs, 0) - math.log(len(self.members))


def build_teacher(cfg: dict, **options) -> nn.Module:
    """A distiller's teacher from its ``teacher`` dict: a
    :class:`FrozenTeacher`, or with ``members=[...]`` an
    :class:`EnsembleTeacher` (``options``: ``teacher_autocast``...)."""
    if isinstance(cfg, dict) and 'members' in cfg:
        unknown = set(cfg) - {'members'}
        if unknown:
            raise ValueError(f'an ensemble teacher takes only `members`; '
                             f'unknown keys {sorted(unknown)}')
        return EnsembleTeacher(cfg['members'], **options)
    return FrozenTeacher.from_cfg(cfg, **options)
