# scikit-learn's bundled 8x8 digits: 1347 train / 450 test images, 10
# classes, shipped inside scikit-learn (no files, no download).
dataset_type = 'SklearnDigits'

data_preprocessor = dict(
    num_classes=10,
    # Mean and std of the training images (0-255 scale).
    mean=[78.1],
    std=[96.0])

train_pipeline = [
    dict(type='RandomCrop', crop_size=8, padding=1),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    # 1347 = 21 x 64 + 3: a last batch of 3 images gave BatchNorm running
    # statistics so noisy that validation accuracy fell to 25-45% mid-run
    # and the final top-1 varied by 6 points over seeds (90-96 for a TSD
    # teacher over seeds 0-2; 96-97 with drop_last).
    drop_last=True,
    dataset=dict(type=dataset_type, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    dataset=dict(
        type=dataset_type, split='test', test_mode=True,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
