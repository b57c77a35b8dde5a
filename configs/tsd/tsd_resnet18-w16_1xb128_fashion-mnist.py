# A tolerant chain on Fashion-MNIST: the patriarch M0 trains with TSD, then
# 5 born-again generations M1..M5, each the student of the one before.
#   python tools/train.py configs/tsd/tsd_resnet18-w16_1xb128_fashion-mnist.py
#   python tools/train.py configs/tsd/tsd_resnet18-w16_1xb128_fashion-mnist.py --resume
# Report: work_dirs/tsd_resnet18-w16_1xb128_fashion-mnist/generations.{md,json,png}
# Compare with ban_/ban-lsr_/ban-cp_resnet18-w16_1xb128_fashion-mnist.py (same
# chain, other patriarch loss) using tools/analysis/plot_chains.py.
_base_ = ['./strict-teacher_resnet18-w16_1xb128_fashion-mnist.py']

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
