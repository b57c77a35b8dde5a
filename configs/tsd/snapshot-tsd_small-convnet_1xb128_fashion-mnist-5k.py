# Snapshot generations in the memorising regime: the tolerant chain of
# tsd_small-convnet_1xb128_fashion-mnist-5k.py (M0..M5, 30 epochs each) as
# one run of 6 cosine cycles of 30 epochs (the same 180 epochs). Cycle 0
# trains with TSD, as the chain's patriarch; at the end of each cycle the
# weights are frozen as the next cycle's teacher, which goes on from them.
#   python tools/train.py configs/tsd/snapshot-tsd_small-convnet_1xb128_fashion-mnist-5k.py
# Report: work_dirs/snapshot-tsd_small-convnet_1xb128_fashion-mnist-5k/generations.md
_base_ = ['./strict-teacher_small-convnet_1xb128_fashion-mnist-5k.py']

num_cycles = 6
cycle_epochs = 30

# The student of every cycle after the first, as the chain's students.
model = dict(
    type='DistillImageClassifier',
    teacher=None,
    # The validation reports the student alone (each cycle's teacher is the
    # cycle before it, whose top-1 the report has).
    eval_teacher=False,
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0))
# Each cycle: the chain's cosine decay of one generation, then a restart.
param_scheduler = dict(
    _delete_=True, type='CosineRestartLR', by_epoch=True,
    periods=[cycle_epochs] * num_cycles, restart_weights=[1] * num_cycles,
    eta_min=1e-4, convert_to_iter_based=True)
# Resumable mid-epoch (PreemptionHook's checkpoints, SLURM's signals).
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=num_cycles * cycle_epochs,
                 val_interval=cycle_epochs)
custom_hooks = [
    dict(type='SnapshotGenerationsHook', num_cycles=num_cycles,
         first_cycle_loss=dict(type='TSDLoss', eta=0.6, k=3)),
    dict(type='EpochSeedHook'),
    dict(type='PreemptionHook'),
    dict(type='ExportModelHook'),
]
