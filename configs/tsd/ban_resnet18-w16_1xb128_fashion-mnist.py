# The strict (born-again) baseline chain: cross-entropy for every teacher.
_base_ = ['./tsd_resnet18-w16_1xb128_fashion-mnist.py']

generations = dict(tolerant='none')
