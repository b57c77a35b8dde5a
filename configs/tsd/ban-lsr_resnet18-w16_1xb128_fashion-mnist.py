# Baseline chain whose patriarch is softened by label smoothing (LSR),
# mmpretrain's LabelSmoothLoss.
_base_ = ['./tsd_resnet18-w16_1xb128_fashion-mnist.py']

generations = dict(
    teacher_loss=dict(
        _delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
        num_classes=10))
