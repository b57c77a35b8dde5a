# Tolerant chain in the memorising regime (see strict-teacher_small-convnet_1xb128_fashion-mnist-5k.py):
# a TSD patriarch M0, then born-again students M1..M5.
#   python tools/train.py configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py
# The 3-seed study of docs/results.md:
#   python tools/analysis/sweep.py configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py \
#       --grid generations.lam=0.5 --seeds 0 1 2 --parallel 2 --work-dir work_dirs/fashion-mnist-5k_tsd
_base_ = ['./strict-teacher_small-convnet_1xb128_fashion-mnist-5k.py']

runner_type = 'GenerationRunner'
generations = dict(
    num_generations=5,
    tolerant='patriarch',
    # eta 0.6: the best of 0.6..1.0 in docs/results.md (sweep of M0..M2).
    teacher_loss=dict(type='TSDLoss', eta=0.6, k=3),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
    hand_on='last',
    report_k=3,
    # Training-set top-1 and confidence in the report: how one-hot each
    # teacher's targets are.
    report_train=True,
)
