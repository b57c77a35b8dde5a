from typing import Optional

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .per_sample_loss import CrossEntropyBasedLoss
from .utils import check_in_range, entropy, log_terms


@MODELS.register_module()
class ConfidencePenaltyLoss(CrossEntropyBasedLoss):
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
        beta = check_in_range('ConfidencePenaltyLoss', 'beta', beta, 0.0,
                              float('inf'))
        super().__init__(loss_weight, reduction, class_weight)
        self.beta = beta

    def per_sample(self, cls_score: torch.Tensor,
                   label: torch.Tensor) -> torch.Tensor:
        ce = self.cross_entropy(cls_score, label)
        ent = entropy(F.log_softmax(cls_score.float(), dim=1))
        if self.training:
            log_terms(
                loss_cp_ce=self.loss_weight * ce.mean(),
                loss_cp_entropy=-self.loss_weight * self.beta * ent.mean())
        return ce - self.beta * ent

    def extra_repr(self) -> str:
        return f'beta={self.beta}, loss_weight={self.loss_weight}'
