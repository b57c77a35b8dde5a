# A small LeNet-style CNN for studies on CPU: three 3x3 conv-BN-ReLU stages
# (8/16/32 channels, 28 -> 14 -> 7), then a flattened 7x7x32 map through
# mmpretrain's LinearNeck (1568 -> 128, BN, ReLU) and a linear head.
# 0.2M parameters; with no global pooling it can memorise a small training
# set, the regime where a strict teacher's outputs become one-hot.
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SmallConvNet', in_channels=1, widths=(8, 16, 32),
        convs_per_stage=1),
    neck=dict(
        type='LinearNeck', in_channels=32 * 7 * 7, out_channels=128,
        act_cfg=dict(type='ReLU')),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
