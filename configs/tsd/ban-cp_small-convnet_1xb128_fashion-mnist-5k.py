# Baseline chain whose patriarch is softened by a confidence penalty (CP,
# beta 0.1).
_base_ = ['./tsd_small-convnet_1xb128_fashion-mnist-5k.py']

generations = dict(
    teacher_loss=dict(_delete_=True, type='ConfidencePenaltyLoss', beta=0.1))
