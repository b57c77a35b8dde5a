import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .per_sample_loss import CrossEntropyBasedLoss
from .utils import check_in_range, log_terms


def top_score_difference(cls_score: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-sample Top Score Difference of the softmax output.

    .. math::
        \mathrm{TSD}(f) = f_{a_1} - \frac{1}{K-1}\sum_{k=2}^{K} f_{a_k}

    where :math:`a_k` is the index of the k-th largest probability. Ties
    give the same value whichever tied index ``topk`` picks.
    """
    prob = F.softmax(cls_score.float(), dim=1)
    top = prob.topk(k, dim=1).values  # sorted, largest first
    return top[:, 0] - top[:, 1:].mean(dim=1)


@MODELS.register_module()
class TSDLoss(CrossEntropyBasedLoss):
    r"""The tolerant teacher's loss: cross-entropy plus Top Score Difference.

    From "Training Deep Neural Networks in Generations: A More Tolerant
    Teacher Educates Better Students" (Yang et al., AAAI 2019):

    .. math::
        L_T = \eta \cdot \mathrm{CE}(y, f) + (1 - \eta) \cdot
              \Big[ f_{a_1} - \frac{1}{K-1}\sum_{k=2}^{K} f_{a_k} \Big]

    :math:`f` is the softmax of ``cls_score`` and :math:`a_k` the index of its
    k-th largest entry. The second term lowers the primary score and raises
    the next K-1, so a few plausible secondary classes keep confidence instead
    of it being spread over all classes. ``eta=1`` is plain cross-entropy.

    Args:
        eta (float): Weight of cross-entropy, in [0, 1]. ``1 - eta`` weighs
            the TSD term.
        k (int): Classes kept, the primary one included; ``k >= 2`` and at
            most the number of classes.
        loss_weight (float): Multiplies the whole loss. Defaults to 1.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        num_classes (int, optional): If given, ``k`` is checked against it at
            build time; otherwise at the first call. Defaults to None.
        class_weight (list[float], optional): Per-class weights of the
            cross-entropy term. Defaults to None.

    ``label`` may be class indices (N,) or soft targets (N, C) from Mixup,
    CutMix or label smoothing; only the cross-entropy term uses it.
    """

    def __init__(self,
                 eta: float,
                 k: int,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 num_classes: Optional[int] = None,
                 class_weight: Optional[list] = None):
        eta = check_in_range('TSDLoss', 'eta', eta, 0.0, 1.0)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) \
                or k < 2:
            raise ValueError('TSDLoss: k (classes kept, the primary one '
                             f'included) must be an integer >= 2, got {k!r}')
        if num_classes is not None and k > num_classes:
            raise ValueError(f'TSDLoss: k={k} is larger than num_classes='
                             f'{num_classes}')
        super().__init__(loss_weight, reduction, class_weight)
        self.eta = eta
        self.k = int(k)
        self.num_classes = num_classes

    def per_sample(self, cls_score: torch.Tensor,
                   label: torch.Tensor) -> torch.Tensor:
        ce = self.cross_entropy(cls_score, label)
        num_classes = cls_score.shape[1]
        if self.k > num_classes:
            raise ValueError(f'TSDLoss: k={self.k} is larger than the '
                             f'{num_classes} classes of cls_score')
        if self.eta == 1.0:
            return ce
        tsd = top_score_difference(cls_score, self.k)
        if self.training:
            log_terms(
                loss_tsd_ce=self.loss_weight * self.eta * ce.mean(),
                loss_tsd_term=self.loss_weight * (1 - self.eta) * tsd.mean())
        return self.eta * ce + (1.0 - self.eta) * tsd

    def extra_repr(self) -> str:
        return f'eta={self.eta}, k={self.k}, loss_weight={self.loss_weight}'
