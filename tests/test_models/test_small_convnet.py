import pytest
import torch

import mmtolerant  # noqa: F401
from mmpretrain.registry import MODELS


def test_small_convnet_halves_the_resolution_per_stage_and_returns_chosen_stages():
    net = MODELS.build(dict(type='SmallConvNet', in_channels=3,
                            widths=(4, 8, 16), out_indices=(0, -1)))
    outs = net(torch.randn(2, 3, 28, 28))
    assert [o.shape for o in outs] == [(2, 4, 28, 28), (2, 16, 7, 7)]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 * 3  # convs_per_stage=2 by default


def test_small_convnet_config_flattens_into_linear_neck():
    from mmengine.config import Config
    cfg = Config.fromfile('configs/_base_/models/small-convnet_fashion-mnist.py')
    model = MODELS.build(cfg.model)
    assert model.eval()(torch.randn(3, 1, 28, 28), mode='tensor').shape == (
        3, 10)
    assert sum(p.numel() for p in model.parameters()) < 250_000


@pytest.mark.parametrize('kwargs, match', [
    (dict(widths=()), 'widths must be positive integers'),
    (dict(widths=(8, 0)), r'widths must be positive integers, got \(8, 0\)'),
    (dict(convs_per_stage=0), 'convs_per_stage must be an integer >= 1, '
     'got 0'),
    (dict(out_indices=(3, )), r'out_indices \(3,\) out of range for 3'),
])
def test_small_convnet_refuses_bad_arguments_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='SmallConvNet', **kwargs))
