import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .per_sample_loss import PerSampleLoss
from .utils import check_logits, check_positive


def distill_kl_divergence(student_logits: torch.Tensor,
                          teacher_logits: torch.Tensor,
                          tau: float = 1.0) -> torch.Tensor:
    r"""Per-sample :math:`\tau^2 \cdot KL(softmax(t/\tau) \| softmax(s/\tau))`.

    The teacher is detached; the maths runs in float32 even under AMP.
    """
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=1)
    log_p_teacher = F.log_softmax(
        teacher_logits.detach().float() / tau, dim=1)
    p_teacher = log_p_teacher.exp()
    # xlogy keeps classes the teacher rules out (p = 0, log p = -inf) at 0.
    kl = torch.special.xlogy(p_teacher, p_teacher) - p_teacher * torch.where(
        p_teacher > 0, log_p_student, torch.zeros_like(log_p_student))
    return (tau * tau) * kl.sum(dim=1)


@MODELS.register_module()
class DistillKLLoss(PerSampleLoss):
    r"""Knowledge-distillation loss from a frozen teacher.

    .. math::
        L_{KD} = \tau^2 \cdot \mathrm{KL}\big(\mathrm{softmax}(t/\tau)
                 \,\|\, \mathrm{softmax}(s/\tau)\big)

    averaged over the batch, with :math:`s` the student's and :math:`t` the
    teacher's logits. The teacher never receives gradients. The
    :math:`\tau^2` factor keeps the gradient scale independent of
    :math:`\tau` (Hinton et al., 2015). In the student loss
    :math:`L_S = \lambda\,\mathrm{CE} + (1-\lambda)\,\mathrm{KL}`,
    ``loss_weight`` carries :math:`1-\lambda`.

    Args:
        tau (float): Temperature, > 0. Defaults to 1.0 (the paper's KL).
        loss_weight (float): Multiplies the loss. Defaults to 1.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.

    Called as ``loss(student_logits, teacher_logits, weight=None,
    avg_factor=None, reduction_override=None)``.
    """

    def __init__(self,
                 tau: float = 1.0,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean'):
        tau = check_positive('DistillKLLoss', 'tau', tau)
        super().__init__(loss_weight, reduction)
        self.tau = tau

    def forward(self, student_logits: torch.Tensor,
                teacher_logits: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """:meth:`PerSampleLoss.forward`, with the logits' names."""
        return super().forward(student_logits, teacher_logits, *args,
                               **kwargs)

    def per_sample(self, student_logits: torch.Tensor,
                   teacher_logits: torch.Tensor) -> torch.Tensor:
        check_logits('DistillKLLoss', student_logits, 'student_logits')
        check_logits('DistillKLLoss', teacher_logits, 'teacher_logits')
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                'DistillKLLoss: student and teacher logits must have the '
                f'same shape, got {tuple(student_logits.shape)} and '
                f'{tuple(teacher_logits.shape)}')
        return distill_kl_divergence(student_logits, teacher_logits,
                                     self.tau)

    def extra_repr(self) -> str:
        return f'tau={self.tau}, loss_weight={self.loss_weight}'
