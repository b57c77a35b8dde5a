# Tolerant chain in the memorising regime (see strict_teacher_cnn_fm500.py):
# a TSD patriarch M0, then born-again students M1..M5.
#   python tools/train.py configs/fashion_mnist_500/tsd_chain_cnn_fm500.py
# The 3-seed study of docs/results.md:
#   python tools/analysis/sweep.py configs/fashion_mnist_500/tsd_chain_cnn_fm500.py \
#       --grid generations.lam=0.5 --seeds 0 1 2 --parallel 2 --work-dir work_dirs/fm500_tsd
_base_ = ['./strict_teacher_cnn_fm500.py']

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
