"""A small VGG-style CNN for fast CPU studies on 28x28 / 32x32 images."""
from typing import Sequence

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.registry import MODELS


@MODELS.register_module()
class SmallConvNet(BaseBackbone):
    """Stages of 3x3 conv-BN-ReLU blocks, each stage after the first
    starting with a 2x2 max-pool.

    With the defaults (16/32/64 channels, two convolutions per stage) it has
    70k parameters and costs about 6.5 MFLOPs per 28x28 image. It is meant
    for studies (many seeds, many generations) on CPU; any mmpretrain
    backbone works in the same configs.

    Args:
        in_channels (int): Input channels (1 for grey images). Default 1.
        widths (Sequence[int]): Output channels of each stage.
            Default (16, 32, 64).
        convs_per_stage (int): 3x3 convolutions per stage. Default 2.
        out_indices (Sequence[int]): Stages whose feature maps are returned.
            Default (-1,): the last one, for ``GlobalAveragePooling``.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    def __init__(self,
                 in_channels: int = 1,
                 widths: Sequence[int] = (16, 32, 64),
                 convs_per_stage: int = 2,
                 out_indices: Sequence[int] = (-1, ),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg or [
            dict(type='Kaiming', layer='Conv2d'),
            dict(type='Constant', val=1, layer='_BatchNorm')
        ])
        widths = tuple(widths)
        if not widths or any(
                not isinstance(w, int) or isinstance(w, bool) or w < 1
                for w in widths):
            raise ValueError('SmallConvNet: widths must be positive integers, '
                             f'got {widths!r}')
        if not isinstance(convs_per_stage, int) or convs_per_stage < 1:
            raise ValueError('SmallConvNet: convs_per_stage must be an '
                             f'integer >= 1, got {convs_per_stage!r}')
        n = len(widths)
        indices = []
        for i in out_indices:
            if not -n <= i < n:
                raise ValueError(f'SmallConvNet: out_indices {tuple(out_indices)!r} '
                                 f'out of range for {n} stages')
            indices.append(i % n)
        self.out_indices = tuple(indices)
        self.stages = nn.ModuleList()
        channels = in_channels
        for i, width in enumerate(widths):
            layers = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(convs_per_stage):
                layers.append(
                    ConvModule(channels, width, 3, padding=1,
                               norm_cfg=dict(type='BN'),
                               act_cfg=dict(type='ReLU')))
                channels = width
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x):
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
