# The "memorising" regime of issue 5: 500 training images per class (the
# first 5,000 of Fashion-MNIST's training set), no augmentation, 30 epochs,
# a small CNN. A strict teacher reaches 100% training accuracy here and its
# outputs become almost one-hot, which is where a tolerant teacher should
# matter. Validation (the full 10k test set) runs once, at the end.
#   python tools/train.py configs/tsd/strict-teacher_small-convnet_1xb128_fashion-mnist-5k.py
_base_ = [
    '../_base_/models/small-convnet_fashion-mnist.py',
    '../_base_/datasets/fashion_mnist_bs128.py',
    '../_base_/fashion_mnist_runtime.py',
]

train_pipeline = [dict(type='PackInputs')]
# Everything is in memory; worker processes would only cost start-up time.
train_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(indices=5000, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=30, val_interval=30)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=10, max_keep_ckpts=1))
