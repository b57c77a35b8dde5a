# The embedded default: a complete tolerant chain M0 -> M1 -> M2 -> M3 on
# scikit-learn's bundled digits (no download), a few minutes on 2 CPU cores.
#   python tools/train.py configs/tsd/tsd_resnet18-w8_1xb64_digits.py
# Report: work_dirs/tsd_resnet18-w8_1xb64_digits/generations.{md,json,png}
_base_ = ['./strict-teacher_resnet18-w8_1xb64_digits.py']

runner_type = 'GenerationRunner'
generations = dict(
    num_generations=3,
    # TSD on the patriarch only (the paper's setting); 'all' or 'none'.
    tolerant='patriarch',
    # eta=0.7 from tools/analysis/sweep.py over eta in {0.5,...,1.0}, 2 seeds
    # (docs/results.md): the best final generation and ensemble there.
    teacher_loss=dict(type='TSDLoss', eta=0.7, k=3),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
    hand_on='last',
)
