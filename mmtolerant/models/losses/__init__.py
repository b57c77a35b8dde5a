from .confidence_penalty_loss import ConfidencePenaltyLoss
from .distill_kl_loss import DistillKLLoss, distill_kl_divergence
from .tsd_loss import TSDLoss, top_score_difference

__all__ = [
    'TSDLoss', 'top_score_difference', 'DistillKLLoss',
    'distill_kl_divergence', 'ConfidencePenaltyLoss'
]
