from typing import Optional

import torch
import torch.nn as nn
from mmpretrain.models.losses.utils import weight_reduce_loss

from .utils import (as_target, check_reduction, check_weight,
                    cross_entropy_per_sample)


class PerSampleLoss(nn.Module):
    """The shape of the plugin's losses: a loss per sample, weighted and
    reduced as mmpretrain's losses do, so that a head can swap them freely.

    ``forward(cls_score, label, weight=None, avg_factor=None,
    reduction_override=None)`` gives ``loss_weight`` times the ``weight``-ed
    per-sample loss reduced by ``reduction`` ('none', 'mean' or 'sum'; a
    mean over ``avg_factor`` when given). A subclass computes the per-sample
    loss in :meth:`per_sample`.

    Args:
        loss_weight (float): Multiplies the loss. Defaults to 1.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean'):
        super().__init__()
        self.reduction = check_reduction(type(self).__name__, reduction)
        self.loss_weight = float(loss_weight)

    def per_sample(self, cls_score: torch.Tensor,
                   label: torch.Tensor) -> torch.Tensor:
        """The loss of each sample, shape (N,)."""
        raise NotImplementedError

    def forward(self,
                cls_score: torch.Tensor,
                label: torch.Tensor,
                weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> torch.Tensor:
        name = type(self).__name__
        reduction = check_reduction(name, reduction_override
                                    or self.reduction)
        loss = self.per_sample(cls_score, label)
        weight = check_weight(name, weight, loss.shape[0])
        loss = weight_reduce_loss(
            loss, weight=weight, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss


class CrossEntropyBasedLoss(PerSampleLoss):
    """A :class:`PerSampleLoss` with a cross-entropy term against the
    labels: class indices (N,) / (N, 1) or soft targets (N, C) from Mixup,
    CutMix or label smoothing.

    Args:
        loss_weight (float): Multiplies the loss. Defaults to 1.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        class_weight (list[float], optional): Per-class weights of the
            cross-entropy term. Defaults to None.
    """

    def __init__(self,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 class_weight: Optional[list] = None):
        super().__init__(loss_weight, reduction)
        # A buffer: made once, it moves with the model instead of being
        # copied to the device at every step.
        self.register_buffer(
            'class_weight',
            None if class_weight is None else torch.as_tensor(
                class_weight, dtype=torch.float32),
            persistent=False)

    def cross_entropy(self, cls_score: torch.Tensor,
                      label: torch.Tensor) -> torch.Tensor:
        """The per-sample cross-entropy term (see :func:`as_target` for the
        labels it takes and refuses)."""
        name = type(self).__name__
        return cross_entropy_per_sample(name, cls_score,
                                        as_target(name, cls_score, label),
                                        self.class_weight)
