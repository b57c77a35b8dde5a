# Born-again chain in the memorising regime whose students learn from the
# ensemble of all generations before them (the average of M0..Mm-1's softmax
# outputs) instead of Mm-1 alone; otherwise ban_small-convnet_1xb128_fashion-mnist-5k.py.
#   python tools/train.py configs/tsd/ban-ensemble_small-convnet_1xb128_fashion-mnist-5k.py
_base_ = ['./ban_small-convnet_1xb128_fashion-mnist-5k.py']

generations = dict(teacher='ensemble')
