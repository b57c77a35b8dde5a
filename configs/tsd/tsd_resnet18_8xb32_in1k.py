# A tolerant chain on ImageNet-1k with mmpretrain's ResNet-18 recipe
# (8 GPUs x 32 images, 100 epochs per generation), mmpretrain's standard data
# layout under data/imagenet (train/, val/, meta/train.txt, meta/val.txt).
#   tools/dist_train.sh configs/tsd/tsd_resnet18_8xb32_in1k.py 8
#   tools/dist_train.sh configs/tsd/tsd_resnet18_8xb32_in1k.py 8 --resume   # after a kill
# Report: work_dirs/tsd_resnet18_8xb32_in1k/generations.{md,json,png}
# The data elsewhere: --cfg-options data_root=/path/to/imagenet
_base_ = [
    'mmpretrain::resnet/resnet18_8xb32_in1k.py',
    '../_base_/tsd_chain_in1k.py',
]

data_root = 'data/imagenet'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

default_hooks = dict(checkpoint=dict(max_keep_ckpts=2, save_last=True))
