# Schedule and runtime shared by the Fashion-MNIST configs.
_base_ = [
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
# Cosine decay over however many epochs train_cfg.max_epochs asks for.
param_scheduler = dict(
    _delete_=True, type='CosineAnnealingLR', by_epoch=True, eta_min=1e-4,
    convert_to_iter_based=True)
train_cfg = dict(by_epoch=True, max_epochs=10, val_interval=1)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2,
                    save_last=True, save_best='accuracy/top1', rule='greater'),
)
# Writes exported_model.pth (weights only) and exported_model.py (a stock
# ImageClassifier config) into the work_dir when training ends.
custom_hooks = [dict(type='ExportModelHook')]

randomness = dict(seed=0, deterministic=False)
