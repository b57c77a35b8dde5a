# Snapshot generations on ImageNet-1k with mmpretrain's ResNet-50 recipe
# (8 GPUs x 32 images): the tolerant chain of tsd_resnet50_8xb32_in1k.py
# (M0..M3, 100 epochs each) as one run of 4 cosine cycles of 100 epochs
# (shorter cycles trade accuracy for cost). Cycle 0 trains with TSD; each
# cycle's final weights teach the next. Data as mmpretrain's: data/imagenet.
#   tools/dist_train.sh configs/tsd/snapshot-tsd_resnet50_8xb32_in1k.py 8
#   tools/dist_train.sh configs/tsd/snapshot-tsd_resnet50_8xb32_in1k.py 8 --resume
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py']

custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)

data_root = 'data/imagenet'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

num_cycles = 4
cycle_epochs = 100

model = dict(
    type='DistillImageClassifier',
    teacher=None,
    eval_teacher=False,
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0))
param_scheduler = dict(
    _delete_=True, type='CosineRestartLR', by_epoch=True,
    periods=[cycle_epochs] * num_cycles, restart_weights=[1] * num_cycles,
    eta_min=0.0, convert_to_iter_based=True)
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=num_cycles * cycle_epochs, val_interval=10)
default_hooks = dict(checkpoint=dict(max_keep_ckpts=2, save_last=True),
                     sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [
    dict(type='SnapshotGenerationsHook', num_cycles=num_cycles,
         first_cycle_loss=dict(type='TSDLoss', eta=0.5, k=5), report_k=5),
    dict(type='EpochSeedHook'),
    dict(type='PreemptionHook'),
    dict(type='ExportModelHook'),
]
