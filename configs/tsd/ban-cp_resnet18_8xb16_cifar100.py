# Baseline chain whose patriarch is softened by a confidence penalty (CP).
_base_ = ['./tsd_resnet18_8xb16_cifar100.py']

generations = dict(
    teacher_loss=dict(_delete_=True, type='ConfidencePenaltyLoss', beta=0.1))
