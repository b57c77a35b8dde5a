# mmpretrain's CIFAR ResNet-18, narrowed to 16 base channels (0.7M
# parameters) and given one input channel: a ResNet that trains on
# Fashion-MNIST on a CPU.
_base_ = ['mmpretrain::_base_/models/resnet18_cifar.py']

model = dict(
    backbone=dict(in_channels=1, stem_channels=16, base_channels=16),
    head=dict(num_classes=10, in_channels=128, topk=(1, 5)))
