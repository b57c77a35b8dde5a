# A tolerant chain on ImageNet-1k with mmpretrain's ResNet-50 recipe
# (8 GPUs x 32 images, 100 epochs per generation), mmpretrain's standard data
# layout under data/imagenet (train/, val/, meta/train.txt, meta/val.txt).
#   tools/dist_train.sh configs/tsd_resnet50_in1k.py 8
#   tools/dist_train.sh configs/tsd_resnet50_in1k.py 8 --resume   # after a kill
# Report: work_dirs/tsd_resnet50_in1k/generations.{md,json,png}
# The data elsewhere: --cfg-options data_root=/path/to/imagenet
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py']

custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)

data_root = 'data/imagenet'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

runner_type = 'GenerationRunner'
generations = dict(
    num_generations=3,
    tolerant='patriarch',
    # K=5 plausible classes per image among 1000; eta as on CIFAR-100.
    teacher_loss=dict(type='TSDLoss', eta=0.5, k=5),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
    hand_on='last',
    report_k=5,
)

default_hooks = dict(checkpoint=dict(max_keep_ckpts=2, save_last=True))
