# Strict teacher on CIFAR-100: mmpretrain's CIFAR ResNet-18 and CIFAR-100
# recipe (200 epochs, SGD 0.1, steps at 60/120/160), cross-entropy.
#   tools/dist_train.sh configs/tsd/strict-teacher_resnet18_8xb16_cifar100.py 8
# The data goes to data/cifar100 (mmpretrain downloads it there when it is
# missing); point elsewhere with --cfg-options data_root=/path/to/cifar100.
_base_ = [
    'mmpretrain::_base_/models/resnet18_cifar.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)

data_root = 'data/cifar100'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

model = dict(
    head=dict(num_classes=100, topk=(1, 5),
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))

# mmpretrain's CIFAR-100 recipe (resnet50_8xb16_cifar100.py).
optim_wrapper = dict(optimizer=dict(weight_decay=0.0005))
param_scheduler = dict(
    type='MultiStepLR', by_epoch=True, milestones=[60, 120, 160], gamma=0.2)

default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=2,
                    save_last=True, save_best='accuracy/top1', rule='greater'),
)
custom_hooks = [dict(type='ExportModelHook')]
