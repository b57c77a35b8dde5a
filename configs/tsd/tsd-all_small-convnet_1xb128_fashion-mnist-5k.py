# Persistent tolerance: the patriarch trains with TSD(eta=0.6) as in
# tsd_small-convnet_1xb128_fashion-mnist-5k.py, and every later teacher
# M1..M4 keeps a smaller dose of it (TSD with eta=0.8 as its head loss, next to the distillation loss),
# so the chain's confidence does not climb back to one-hot; the last
# generation M5 teaches nobody and trains with cross-entropy.
_base_ = ['./tsd_small-convnet_1xb128_fashion-mnist-5k.py']

generations = dict(
    tolerant='all',
    overrides={m: {'model.head.loss.eta': 0.8} for m in range(1, 5)},
)
