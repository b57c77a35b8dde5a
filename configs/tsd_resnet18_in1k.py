# The documented entry point for a tolerant chain on ImageNet-1k with
# mmpretrain's ResNet-18 recipe: configs/tsd/tsd_resnet18_8xb32_in1k.py
# (8 GPUs x 32 images, 3 generations of 100 epochs), under a short name.
#   tools/dist_train.sh configs/tsd_resnet18_in1k.py 8
#   tools/dist_train.sh configs/tsd_resnet18_in1k.py 8 --resume   # after a kill
# Report: work_dirs/tsd_resnet18_in1k/generations.{md,json,png}
# The data elsewhere: --cfg-options data_root=/path/to/imagenet
_base_ = ['./tsd/tsd_resnet18_8xb32_in1k.py']
