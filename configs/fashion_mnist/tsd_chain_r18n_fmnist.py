# A tolerant chain on Fashion-MNIST: the patriarch M0 trains with TSD, then
# 5 born-again generations M1..M5, each the student of the one before.
#   python tools/train.py configs/fashion_mnist/tsd_chain_r18n_fmnist.py
#   python tools/train.py configs/fashion_mnist/tsd_chain_r18n_fmnist.py --resume
# Report: work_dirs/tsd_chain_r18n_fmnist/generations.{md,json,png}
# Compare with strict_/lsr_/cp_chain_r18n_fmnist.py (same chain, other
# patriarch loss) using tools/analysis/plot_chains.py.
_base_ = ['./strict_teacher_r18n_fmnist.py']

runner_type = 'GenerationRunner'
generations = dict(
    num_generations=5,
    tolerant='patriarch',
    teacher_loss=dict(type='TSDLoss', eta=0.5, k=3),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
    hand_on='last',
    report_k=3,
)
