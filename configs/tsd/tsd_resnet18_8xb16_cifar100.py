# A tolerant chain on CIFAR-100 (mmpretrain's ResNet-18 recipe, 200 epochs
# per generation): the patriarch M0 trains with TSD, then 3 born-again
# generations M1..M3, each the student of the one before.
#   tools/dist_train.sh configs/tsd/tsd_resnet18_8xb16_cifar100.py 8
#   tools/dist_train.sh configs/tsd/tsd_resnet18_8xb16_cifar100.py 8 --resume
# Report: work_dirs/tsd_resnet18_8xb16_cifar100/generations.{md,json,png}
# Compare with ban_/ban-lsr_/ban-cp_resnet18_8xb16_cifar100.py (same chain, other
# patriarch loss) using tools/analysis/plot_chains.py.
_base_ = ['./strict-teacher_resnet18_8xb16_cifar100.py']

runner_type = 'GenerationRunner'
generations = dict(
    num_generations=3,
    tolerant='patriarch',
    teacher_loss=dict(type='TSDLoss', eta=0.5, k=5),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
    hand_on='last',
    report_k=5,
)
