from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.models.losses.utils import weight_reduce_loss
from mmpretrain.registry import MODELS

from .utils import (as_target, check_in_range, check_reduction,
                    check_weight, cross_entropy_per_sample, entropy,
                    log_terms)


@MODELS.register_module()
class ConfidencePenaltyLoss(nn.Module):
    r"""Cross-entropy with a confidence penalty (Pereyra et al., 2017).

    .. math::
        L_{CP} = \mathrm{CE}(y, f) - \beta \cdot H(f), \qquad
        H(f) = -\sum_c f_c \log f_c

    Rewarding entropy keeps the output distribution from collapsing onto one
    class: the baseline the paper compares the tolerant teacher with.

    Args:
        beta (float): Weight of the entropy reward, >= 0. ``beta=0`` is plain
            cross-entropy.
        loss_weight (float): Multiplies the whole loss. Defaults to 1.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        class_weight (list[float], optional): Per-class weights of the
            cross-entropy term. Defaults to None.

    ``label`` may be class indices (N,) or soft targets (N, C).
    """

    def __init__(self,
                 beta: float,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 class_weight: Optional[list] = None):
        super().__init__()
        self.beta = check_in_range('ConfidencePenaltyLoss', 'beta', beta, 0.0,
                                   float('inf'))
        self.reduction = check_reduction('ConfidencePenaltyLoss', reduction)
        self.loss_weight = float(loss_weight)
        self.class_weight = class_weight

    def forward(self,
                cls_score: torch.Tensor,
                label: torch.Tensor,
                weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> torch.Tensor:
        reduction = check_reduction('ConfidencePenaltyLoss',
                                    reduction_override or self.reduction)
        target = as_target('ConfidencePenaltyLoss', cls_score, label)
        class_weight = None if self.class_weight is None else \
            cls_score.new_tensor(self.class_weight, dtype=torch.float32)
        ce = cross_entropy_per_sample(cls_score, target, class_weight)
        ent = entropy(F.log_softmax(cls_score.float(), dim=1))
        loss = ce - self.beta * ent
        if self.training:
            log_terms(
                loss_cp_ce=self.loss_weight * ce.mean(),
                loss_cp_entropy=-self.loss_weight * self.beta *
                ent.mean())
        weight = check_weight('ConfidencePenaltyLoss', weight,
                              cls_score.shape[0])
        loss = weight_reduce_loss(
            loss, weight=weight, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f'beta={self.beta}, loss_weight={self.loss_weight}'
