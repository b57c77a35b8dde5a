# Baseline chain whose patriarch is softened by label smoothing (LSR),
# mmpretrain's LabelSmoothLoss.
_base_ = ['./tsd_resnet18_8xb16_cifar100.py']

generations = dict(
    teacher_loss=dict(
        _delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
        num_classes=100))
