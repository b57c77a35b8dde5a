# Strict (born-again) chain in the memorising regime: cross-entropy for every
# teacher; otherwise identical to tsd_small-convnet_1xb128_fashion-mnist-5k.py.
_base_ = ['./tsd_small-convnet_1xb128_fashion-mnist-5k.py']

generations = dict(tolerant='none')
