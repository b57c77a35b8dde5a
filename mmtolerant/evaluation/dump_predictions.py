import os
import os.path as osp
from typing import Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmpretrain.registry import METRICS


@METRICS.register_module()
class DumpPredictions(BaseMetric):
    """Write every test sample's scores and label to an ``.npz`` file.

    The counterpart of mmpretrain's ``DumpResults`` without pickle: the file
    holds arrays only (``scores`` N x C float32, ``labels`` N int64) and
    loads with ``np.load(path, allow_pickle=False)``. Reports no metric.

    Args:
        out_file_path (str): Where to write; must end with ``.npz``.
    """
    default_prefix = 'dump'

    def __init__(self, out_file_path: str, collect_device: str = 'cpu'):
        super().__init__(collect_device=collect_device)
        if not str(out_file_path).endswith('.npz'):
            raise ValueError('DumpPredictions writes .npz files, got '
                             f'{out_file_path!r}')
        self.out_file_path = out_file_path

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                (sample['pred_score'].float().cpu().numpy(),
                 int(torch.as_tensor(sample['gt_label']).view(-1)[0])))

    def compute_metrics(self, results: list) -> dict:
        directory = osp.dirname(osp.abspath(self.out_file_path))
        os.makedirs(directory, exist_ok=True)
        np.savez_compressed(
            self.out_file_path,
            scores=np.stack([r[0] for r in results]),
            labels=np.array([r[1] for r in results], dtype=np.int64))
        return {}
