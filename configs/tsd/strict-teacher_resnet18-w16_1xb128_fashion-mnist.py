# Strict teacher (the born-again baseline's patriarch): plain cross-entropy.
#   python tools/train.py configs/tsd/strict-teacher_resnet18-w16_1xb128_fashion-mnist.py
_base_ = [
    '../_base_/models/resnet18-w16_fashion-mnist.py',
    '../_base_/datasets/fashion_mnist_bs128.py',
    '../_base_/fashion_mnist_runtime.py',
]

model = dict(head=dict(loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
