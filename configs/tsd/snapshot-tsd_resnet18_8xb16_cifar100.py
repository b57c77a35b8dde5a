# Snapshot generations on CIFAR-100: the tolerant chain of
# tsd_resnet18_8xb16_cifar100.py (M0..M3, 200 epochs each) as one run of 4
# cosine cycles of 200 epochs (the same 800 epochs; shorter cycles, e.g.
# cycle_epochs = 100, trade accuracy for half the cost). Cycle 0 trains with
# TSD; each cycle's final weights teach the next.
#   tools/dist_train.sh configs/tsd/snapshot-tsd_resnet18_8xb16_cifar100.py 8
#   tools/dist_train.sh configs/tsd/snapshot-tsd_resnet18_8xb16_cifar100.py 8 --resume
_base_ = ['./strict-teacher_resnet18_8xb16_cifar100.py']

num_cycles = 4
cycle_epochs = 200

model = dict(
    type='DistillImageClassifier',
    teacher=None,
    # The validation reports the student alone (each cycle's teacher is the
    # cycle before it, whose top-1 the report has).
    eval_teacher=False,
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0))
param_scheduler = dict(
    _delete_=True, type='CosineRestartLR', by_epoch=True,
    periods=[cycle_epochs] * num_cycles, restart_weights=[1] * num_cycles,
    eta_min=0.0, convert_to_iter_based=True)
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=num_cycles * cycle_epochs, val_interval=10)
# Every sampler seeded by its epoch: a resumed epoch draws the same batches.
default_hooks = dict(sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [
    dict(type='SnapshotGenerationsHook', num_cycles=num_cycles,
         first_cycle_loss=dict(type='TSDLoss', eta=0.5, k=5), report_k=5),
    dict(type='EpochSeedHook'),
    dict(type='PreemptionHook'),
    dict(type='ExportModelHook'),
]
