"""Helpers shared by the plugin's losses: argument checks and target handling.

The losses follow mmpretrain's conventions: ``forward(cls_score, label,
weight=None, avg_factor=None, reduction_override=None)`` where ``label`` is
either class indices of shape (N,) / (N, 1) or soft targets of shape (N, C)
as produced by Mixup, CutMix or label smoothing.
"""
import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F

REDUCTIONS = ('none', 'mean', 'sum')
# F.cross_entropy skips the samples labelled ignore_index (-100 by default):
# a label no dataset gives, so that every label is checked and counted.
NO_IGNORED_LABEL = torch.iinfo(torch.long).min


def loss_name(loss_cfg: dict) -> str:
    """A loss config as a report names it: ``TSDLoss(eta=0.6, k=3)``."""
    args = ', '.join(f'{k}={v}' for k, v in loss_cfg.items()
                     if k not in ('type', 'loss_weight', 'num_classes'))
    return f"{loss_cfg['type']}({args})" if args else loss_cfg['type']


def check_in_range(loss_name: str, arg: str, value, low: float,
                   high: float) -> float:
    """``value`` must be a finite real number in [low, high]; returns it as
    float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)) \
            or not low <= float(value) <= high:
        raise ValueError(f'{loss_name}: {arg} must be a number in '
                         f'[{low:g}, {high:g}], got {value!r}')
    return float(value)


def check_positive(loss_name: str, arg: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)) or not float(value) > 0:
        raise ValueError(
            f'{loss_name}: {arg} must be a finite number > 0, got {value!r}')
    return float(value)


def check_reduction(loss_name: str, reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f'{loss_name}: reduction must be one of '
                         f'{REDUCTIONS}, got {reduction!r}')
    return reduction


def check_logits(loss_name: str, cls_score: torch.Tensor,
                 arg: str = 'cls_score') -> None:
    if not isinstance(cls_score, torch.Tensor) or cls_score.dim() != 2:
        shape = tuple(cls_score.shape) if isinstance(
            cls_score, torch.Tensor) else type(cls_score).__name__
        raise ValueError(f'{loss_name}: {arg} must be logits of shape '
                         f'(N, num_classes), got {shape}')


def as_target(loss_name: str, cls_score: torch.Tensor,
              label: torch.Tensor) -> torch.Tensor:
    """Validate the shape of ``label`` against ``cls_score``.

    Returns class indices of shape (N,) (long) or soft targets of shape
    (N, C) (float), whichever ``label`` holds. Only shapes and dtypes are
    read here: reading the labels' values would make the host wait for the
    device at every step. An index outside [0, C) is refused by
    :func:`cross_entropy_per_sample`.
    """
    check_logits(loss_name, cls_score)
    n, c = cls_score.shape
    if not isinstance(label, torch.Tensor):
        label = torch.as_tensor(label, device=cls_score.device)
    if label.dim() == 2 and label.shape[1] == 1 and c != 1:
        label = label.view(-1)
    if label.dim() == 1:
        if label.shape[0] != n:
            raise ValueError(
                f'{loss_name}: got {n} logits rows but {label.shape[0]} '
                f'labels (cls_score {tuple(cls_score.shape)}, label '
                f'{tuple(label.shape)})')
        if label.is_floating_point():
            raise ValueError(f'{loss_name}: class-index labels must be '
                             f'integers, got dtype {label.dtype}')
        return label.long()
    if label.shape != cls_score.shape:
        raise ValueError(f'{loss_name}: soft targets must have the shape of '
                         f'cls_score {tuple(cls_score.shape)}, got '
                         f'{tuple(label.shape)}')
    return label.float()


def check_weight(loss_name: str, weight: Optional[torch.Tensor],
                 num_samples: int) -> Optional[torch.Tensor]:
    """A per-sample weight must have shape (N,); (N, 1) would broadcast the
    per-sample loss into an (N, N) matrix and give a wrong mean."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        weight = torch.as_tensor(weight)
    if weight.shape != (num_samples, ):
        raise ValueError(f'{loss_name}: weight must have shape '
                         f'({num_samples},), one value per sample, got '
                         f'{tuple(weight.shape)}')
    return weight.float()


def entropy(log_prob: torch.Tensor) -> torch.Tensor:
    """Per-row entropy from log-probabilities; 0 * log 0 counts as 0."""
    return -torch.special.xlogy(log_prob.exp(), log_prob.exp()).sum(dim=1)


def cross_entropy_per_sample(loss_name: str,
                             cls_score: torch.Tensor,
                             target: torch.Tensor,
                             class_weight: Optional[torch.Tensor] = None
                             ) -> torch.Tensor:
    """Per-sample cross-entropy for index or soft targets (float32 maths).

    An index outside [0, C) is refused by torch's own check: on the CPU an
    ``IndexError``, turned here into a ``ValueError`` that names the label;
    on a GPU a device-side assert, as in any PyTorch classifier.
    """
    logits = cls_score.float()
    if class_weight is not None:
        class_weight = class_weight.to(logits.device, torch.float32)
    if target.dim() == 1:
        try:
            return F.cross_entropy(
                logits, target, weight=class_weight, reduction='none',
                ignore_index=NO_IGNORED_LABEL)
        except IndexError:
            c = logits.shape[1]
            bad = target[(target < 0) | (target >= c)]
            if not len(bad):
                raise
            raise ValueError(f'{loss_name}: label {bad[0].item()} is '
                             f'outside [0, {c - 1}] for {c} classes') from None
    loss = -target * F.log_softmax(logits, dim=1)
    if class_weight is not None:
        loss = loss * class_weight
    return loss.sum(dim=1)


def log_terms(**terms: torch.Tensor) -> None:
    """Report loss components to the runner's logs (training only).

    A head returns a single ``loss``; its parts are published on MMEngine's
    message hub under ``train/<name>`` so the logger prints them beside it.
    The hub keeps numbers: the terms come to the host in one transfer.
    """
    if not torch.is_grad_enabled():
        return
    from mmengine.logging import MessageHub
    hub = MessageHub.get_current_instance()
    values = torch.stack([v.detach().float() for v in terms.values()])
    for name, value in zip(terms, values.tolist()):
        hub.update_scalar(f'train/{name}', value)
