# Baseline chain whose patriarch is softened by a confidence penalty (CP).
_base_ = ['./tsd_resnet18-w16_1xb128_fashion-mnist.py']

generations = dict(
    teacher_loss=dict(_delete_=True, type='ConfidencePenaltyLoss', beta=0.1))
