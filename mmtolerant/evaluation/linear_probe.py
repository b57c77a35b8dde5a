"""Transfer by linear probe: frozen features, a fitted linear classifier.

The features are a classifier's ``pre_logits`` (the input of its last linear
layer) on a second dataset, computed with the model's own data
preprocessor. scikit-learn's logistic regression, on standardised features,
is fitted on the probe's training split and scored on its test split.
"""
from typing import Iterable, Tuple

import numpy as np
import torch


@torch.no_grad()
def extract_features(model: torch.nn.Module,
                     dataloader: Iterable) -> Tuple[np.ndarray, np.ndarray]:
    model.eval()
    feats, labels = [], []
    for batch in dataloader:
        data = model.data_preprocessor(batch, training=False)
        f = model.extract_feat(data['inputs'], stage='pre_logits')
        if isinstance(f, (tuple, list)):
            f = f[-1]
        feats.append(f.flatten(1).float().cpu())
        labels.append(torch.cat([s.gt_label for s in data['data_samples']]))
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def probe_accuracy(train: Tuple[np.ndarray, np.ndarray],
                   test: Tuple[np.ndarray, np.ndarray],
                   c: float = 1.0,
                   seed: int = 0) -> float:
    """Top-1 (%) of a logistic regression fitted on ``train`` features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, max_iter=2000, random_state=seed))
    clf.fit(*train)
    return float(100.0 * clf.score(*test))
