import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Re-seeds python, numpy and torch at the start of every epoch from
    ``(seed, epoch, rank)``.

    A run resumed from an epoch checkpoint then draws exactly the random
    numbers (augmentations, dropout) an uninterrupted run draws, which makes
    kill-and-resume reproducible. MMEngine restores model, optimizer and
    schedulers but not the random generators' states.
    """
    priority = 'HIGHEST'

    def before_train_epoch(self, runner) -> None:
        seed = runner.seed
        if seed is None:
            return
        value = (int(seed) + 1000003 * (runner.epoch + 1) +
                 7919 * runner.rank) % (2**31)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)
