# Snapshot generations on Fashion-MNIST: the tolerant chain of
# tsd_resnet18-w16_1xb128_fashion-mnist.py (M0..M5, 10 epochs each) as one
# run of 6 cosine cycles of 10 epochs. Cycle 0 trains with TSD; each cycle's
# final weights teach the next.
#   python tools/train.py configs/tsd/snapshot-tsd_resnet18-w16_1xb128_fashion-mnist.py
#   python tools/train.py configs/tsd/snapshot-tsd_resnet18-w16_1xb128_fashion-mnist.py --resume
_base_ = ['./strict-teacher_resnet18-w16_1xb128_fashion-mnist.py']

num_cycles = 6
cycle_epochs = 10

model = dict(
    type='DistillImageClassifier',
    teacher=None,
    eval_teacher=False,
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0))
param_scheduler = dict(
    _delete_=True, type='CosineRestartLR', by_epoch=True,
    periods=[cycle_epochs] * num_cycles, restart_weights=[1] * num_cycles,
    eta_min=1e-4, convert_to_iter_based=True)
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=num_cycles * cycle_epochs,
                 val_interval=cycle_epochs)
# The sampler seeded by its epoch: a resumed epoch draws the same batches.
default_hooks = dict(sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [
    dict(type='SnapshotGenerationsHook', num_cycles=num_cycles,
         first_cycle_loss=dict(type='TSDLoss', eta=0.5, k=3)),
    dict(type='EpochSeedHook'),
    dict(type='PreemptionHook'),
    dict(type='ExportModelHook'),
]
