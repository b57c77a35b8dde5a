# Snapshot generations on scikit-learn's digits: the tolerant chain of
# tsd_resnet18-w8_1xb64_digits.py (M0..M3, 20 epochs each) as one run of 4
# cosine cycles of 20 epochs. Cycle 0 trains with TSD (the patriarch); at
# the end of each cycle the weights are frozen as the next cycle's teacher.
#   python tools/train.py configs/tsd/snapshot-tsd_resnet18-w8_1xb64_digits.py
# Report: work_dirs/snapshot-tsd_resnet18-w8_1xb64_digits/generations.md
_base_ = ['./strict-teacher_resnet18-w8_1xb64_digits.py']

num_cycles = 4
cycle_epochs = 20

# The student of every cycle after the first; its teacher is the snapshot.
model = dict(
    type='DistillImageClassifier',
    teacher=None,
    # The validation reports the student alone (each cycle's teacher is the
    # cycle before it, whose top-1 the report has).
    eval_teacher=False,
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0))
# One cosine cycle per generation, restarting at the full learning rate.
param_scheduler = dict(
    _delete_=True, type='CosineRestartLR', by_epoch=True,
    periods=[cycle_epochs] * num_cycles, restart_weights=[1] * num_cycles,
    eta_min=1e-3, convert_to_iter_based=True)
# Resumable mid-epoch (PreemptionHook's checkpoints, SLURM's signals).
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=num_cycles * cycle_epochs,
                 val_interval=cycle_epochs)
default_hooks = dict(checkpoint=dict(interval=cycle_epochs // 2))
custom_hooks = [
    dict(type='SnapshotGenerationsHook', num_cycles=num_cycles,
         first_cycle_loss=dict(type='TSDLoss', eta=0.7, k=3)),
    dict(type='EpochSeedHook'),
    dict(type='PreemptionHook'),
    dict(type='ExportModelHook'),
]
