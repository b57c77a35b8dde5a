"""What the analysis tools read from finished chains' work_dirs.

A chain's results are its report (``generations.json``) and, per finished
generation m, the files ``gen_<m>/test_predictions.npz`` and
``gen_<m>/exported_model.pth`` (see :mod:`mmtolerant.utils.chain_layout`).
A missing file raises ``FileNotFoundError`` naming the work_dir.
"""
import json
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np

from mmtolerant.utils.chain_layout import (PREDICTIONS, REPORT_JSON,
                                           generation_paths)
from .generation_report import load_predictions


def chain_labels(work_dirs: Sequence[str],
                 labels: Optional[Sequence[str]] = None) -> List[str]:
    """One name per work_dir: ``labels``, or else each work_dir's folder
    name. Raises ``ValueError`` when the counts differ."""
    labels = labels or [osp.basename(osp.normpath(d)) for d in work_dirs]
    if len(labels) != len(work_dirs):
        raise ValueError(f'{len(work_dirs)} work_dirs but {len(labels)} '
                         'labels')
    return list(labels)


def generation_files(work_dir: str, name: str) -> List[Tuple[int, str]]:
    """``[(m, path)]`` of the chain's ``gen_<m>/<name>``, by m; at least
    one."""
    found = generation_paths(work_dir, name)
    if not found:
        raise FileNotFoundError(
            f'{work_dir}: no gen_<m>/{name}; is it a chain work_dir with a '
            'finished generation?')
    return found


def load_chain_predictions(
        work_dir: str) -> List[Tuple[int, Tuple[np.ndarray, np.ndarray]]]:
    """``[(m, (scores, labels))]`` of every generation's saved test
    predictions."""
    return [(m, load_predictions(path))
            for m, path in generation_files(work_dir, PREDICTIONS)]


def load_chain_report(work_dir: str) -> List[dict]:
    """The chain's per-generation records (``generations.json``)."""
    path = osp.join(work_dir, REPORT_JSON)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} does not exist: is {work_dir} a chain work_dir with a '
            'finished generation?')
    with open(path) as f:
        return json.load(f)
