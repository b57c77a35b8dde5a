# Snapshot generations in the memorising regime with a strict first cycle:
# snapshot-tsd_small-convnet_1xb128_fashion-mnist-5k.py with cross-entropy
# in cycle 0, the one-run counterpart of the strict (born-again) chain.
#   python tools/train.py configs/tsd/snapshot_small-convnet_1xb128_fashion-mnist-5k.py
_base_ = ['./snapshot-tsd_small-convnet_1xb128_fashion-mnist-5k.py']

custom_hooks = [
    dict(type='SnapshotGenerationsHook', num_cycles={{_base_.num_cycles}}),
    dict(type='EpochSeedHook'),
    dict(type='PreemptionHook'),
    dict(type='ExportModelHook'),
]
