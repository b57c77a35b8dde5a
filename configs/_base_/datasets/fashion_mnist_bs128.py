# Fashion-MNIST (28x28 grey, 10 classes, 60k train / 10k test), in
# mmpretrain's layout: data/fashion_mnist, downloaded there by mmpretrain when
# it is missing. Elsewhere: `--cfg-options data_root=/path/to/fashion_mnist`
# (our tools/train.py and tools/test.py carry it into every dataset below) or
# the environment variable MMTOLERANT_FASHION_MNIST=/path/to/fashion_mnist.
dataset_type = 'FashionMNIST'
data_root = '{{$MMTOLERANT_FASHION_MNIST:data/fashion_mnist}}'

data_preprocessor = dict(
    num_classes=10,
    # 0.2860 and 0.3530 of 255: the training set's mean and std.
    mean=[72.94],
    std=[90.02])

train_pipeline = [
    dict(type='RandomCrop', crop_size=28, padding=2),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=128,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        test_mode=False,
        download=True,
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=256,
    num_workers=2,
    persistent_workers=True,
    # mmpretrain's (Fashion)MNIST picks its files by `test_mode`, not by
    # `split`: without test_mode=True the 60k training images are loaded.
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        test_mode=True,
        download=True,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
