# The strict (born-again) baseline chain: cross-entropy for every teacher.
_base_ = ['./tsd_chain_r18_cifar100.py']

generations = dict(tolerant='none')
