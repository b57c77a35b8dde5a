# Baseline chain whose patriarch is softened by label smoothing (LSR,
# mmpretrain's LabelSmoothLoss, epsilon 0.1).
_base_ = ['./tsd_small-convnet_1xb128_fashion-mnist-5k.py']

generations = dict(
    teacher_loss=dict(
        _delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
        num_classes=10))
