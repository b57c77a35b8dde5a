# The strict (born-again) baseline chain: cross-entropy for every teacher.
_base_ = ['./tsd_resnet18_8xb16_cifar100.py']

generations = dict(tolerant='none')
