# A tiny CIFAR ResNet-18 (8 base channels) on scikit-learn's digits: the
# embedded default that trains in seconds on a CPU, with nothing to download.
#   python tools/train.py configs/tsd/strict-teacher_resnet18-w8_1xb64_digits.py
_base_ = [
    'mmpretrain::_base_/models/resnet18_cifar.py',
    '../_base_/datasets/digits_bs64.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)

model = dict(
    backbone=dict(in_channels=1, stem_channels=8, base_channels=8),
    head=dict(num_classes=10, in_channels=64, topk=(1, 5),
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4))
param_scheduler = dict(
    _delete_=True, type='CosineAnnealingLR', by_epoch=True, eta_min=1e-3,
    convert_to_iter_based=True)
# 20 epochs of 21 iterations: about 30 s on 2 CPU cores, ~97% top-1.
train_cfg = dict(by_epoch=True, max_epochs=20, val_interval=1)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2,
                    save_last=True),
)
custom_hooks = [dict(type='ExportModelHook')]
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0, deterministic=False)
