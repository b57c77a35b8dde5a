# Snapshot generations with a strict first cycle (cross-entropy throughout):
# snapshot-tsd_resnet18-w8_1xb64_digits.py without TSD in cycle 0, the
# one-run counterpart of the born-again chain.
#   python tools/train.py configs/tsd/snapshot_resnet18-w8_1xb64_digits.py
_base_ = ['./snapshot-tsd_resnet18-w8_1xb64_digits.py']

custom_hooks = [
    dict(type='SnapshotGenerationsHook', num_cycles={{_base_.num_cycles}}),
    dict(type='EpochSeedHook'),
    dict(type='PreemptionHook'),
    dict(type='ExportModelHook'),
]
