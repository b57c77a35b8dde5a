"""Per-generation predictions, their statistics, ensembles and the report.

Each finished generation stores its softmax scores on the test set in
``gen_<m>/test_predictions.npz`` (``scores`` N x C, float32 up to 20 million
values, float16 beyond, e.g. ImageNet's 50k x 1000; ``labels`` int64 N).
Everything in the report is computed from those files as saved, so the
ensembles of any set of generations can be evaluated later without
re-running a model (``tools/analysis/ensemble.py``) and give the same
numbers.
"""
import json
import os.path as osp
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mmtolerant.utils.chain_layout import (PREDICTIONS, REPORT_JSON,
                                           REPORT_MD, REPORT_PNG,
                                           generation_paths)
from mmtolerant.utils.fileio import atomic_file, atomic_write_text
from .secondary_info import secondary_info

__all__ = [
    'PREDICTIONS', 'generation_paths', 'predict_scores', 'save_predictions',
    'load_predictions', 'topk_accuracy', 'prediction_stats',
    'ensemble_scores', 'render_markdown', 'plot_chains', 'write_report',
    'plot_report'
]


@torch.no_grad()
def predict_scores(model: torch.nn.Module,
                   dataloader: Iterable) -> Tuple[np.ndarray, np.ndarray]:
    """Softmax scores (N, C) and labels (N,) of ``model`` on a dataloader of
    mmpretrain batches (the model's own data preprocessor is applied)."""
    was_training = model.training
    model.eval()
    scores, labels = [], []
    try:
        for batch in dataloader:
            data = model.data_preprocessor(batch, training=False)
            logits = model(data['inputs'], mode='tensor')
            scores.append(F.softmax(logits.float(), dim=1).cpu())
            labels.append(
                torch.cat([s.gt_label for s in data['data_samples']]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores).numpy(), torch.cat(labels).numpy().astype(
        np.int64)


FLOAT32_LIMIT = 20_000_000


def save_predictions(path: str, scores: np.ndarray,
                     labels: np.ndarray) -> np.ndarray:
    """Save scores (float32, or float16 when large) and labels; returns the
    scores as saved, which is what every statistic is computed from."""
    dtype = np.float32 if scores.size <= FLOAT32_LIMIT else np.float16
    saved = scores.astype(dtype)
    with atomic_file(path, suffix='.npz') as tmp:
        np.savez_compressed(tmp, scores=saved, labels=labels)
    return saved.astype(np.float32)


def load_predictions(path: str) -> Tuple[np.ndarray, np.ndarray]:
    # allow_pickle=False: an .npz from elsewhere cannot run code.
    with np.load(path, allow_pickle=False) as data:
        return data['scores'].astype(np.float32), data['labels']


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    return float(100.0 * (top == labels[:, None]).any(axis=1).mean())


def prediction_stats(scores: np.ndarray, labels: np.ndarray,
                     k: int) -> Dict[str, float]:
    """Top-1/top-5 accuracy plus the secondary information of
    :func:`mmtolerant.evaluation.secondary_info.secondary_info` (mean top-1
    probability, entropy, mass of the classes ranked 2..k)."""
    return dict(
        top1=topk_accuracy(scores, labels, 1),
        top5=topk_accuracy(scores, labels, 5),
        **secondary_info(scores, k))


def ensemble_scores(all_scores: Sequence[np.ndarray]) -> np.ndarray:
    """The average prediction of several models."""
    return np.mean(np.stack([s.astype(np.float64) for s in all_scores]),
                   axis=0)


def _fmt(value, digits=2):
    return '—' if value is None else f'{value:.{digits}f}'


def render_markdown(records: List[dict], title: str) -> str:
    train = any('train_top1' in r for r in records)
    columns = 10 + 2 * train
    lines = [
        f'# {title}', '',
        '| gen | trained with | top-1 | top-5 | ensemble 1..m top-1 | '
        'teacher top-1 | mean top-1 prob | entropy | top-K secondary mass '
        '| ' + ('train top-1 | train mean top-1 prob | ' if train else '') +
        'wall time (s) |', '|' + ' --- |' * columns
    ]
    for r in records:
        train_cells = (f"| {_fmt(r.get('train_top1'))} "
                       f"| {_fmt(r.get('train_mean_top1_prob'), 4)} "
                       if train else '')
        lines.append(
            f"| M{r['generation']} | {r['trained_with']} | {_fmt(r['top1'])} "
            f"| {_fmt(r['top5'])} | {_fmt(r.get('ensemble_top1'))} "
            f"| {_fmt(r.get('teacher_top1'))} "
            f"| {_fmt(r['mean_top1_prob'], 4)} | {_fmt(r['entropy'], 4)} "
            f"| {_fmt(r['secondary_mass'], 4)} " + train_cells +
            f"| {_fmt(r.get('wall_time_s'), 0)} |")
    lines += [
        '', 'Accuracies in % on the test split' +
        (' (train: the training set through the test pipeline)'
         if train else '') + '. The ensemble of M1..Mm '
        'averages the softmax outputs of the students up to m (for m = 0, '
        'the patriarch alone). Top-K secondary mass: mean probability of '
        'the classes ranked 2..K.', ''
    ]
    return '\n'.join(lines)


def plot_chains(chains: Dict[str, List[dict]], path: str,
                title: Optional[str] = None) -> None:
    """Left: top-1 per generation (solid) and of the ensemble M1..Mm
    (dashed). Right: the mean top-1 probability (how confident, i.e. how
    little secondary information each generation keeps). One colour per
    chain, so several chains compare side by side."""
    # The object API, not pyplot: no global figure state, so a chain can
    # draw its report in a background thread while the next generation
    # builds.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax, ax_conf = fig.subplots(1, 2)
    single = len(chains) == 1
    for i, (name, records) in enumerate(chains.items()):
        color = f'C{i}'
        gens = [r['generation'] for r in records]
        ax.plot(gens, [r['top1'] for r in records], 'o-', color=color,
                label='Mm' if single else name)
        ens = [(r['generation'], r['ensemble_top1']) for r in records
               if r.get('ensemble_top1') is not None and r['generation'] > 0]
        if ens:
            ax.plot(*zip(*ens), 's--', color=color, alpha=0.6,
                    label='ensemble M1..Mm' if single else
                    f'{name}: ensemble M1..Mm')
        ax_conf.plot(gens, [r['mean_top1_prob'] for r in records], 'o-',
                     color=color, label=None if single else name)
    all_gens = sorted({r['generation'] for rs in chains.values() for r in rs})
    ax.set_ylabel('top-1 accuracy on the test split (%)')
    ax_conf.set_ylabel('mean top-1 probability')
    for a in (ax, ax_conf):
        a.set_xlabel('generation m')
        a.set_xticks(all_gens)
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if not single:
        ax_conf.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path, suffix='.png') as tmp:
        fig.savefig(tmp)


def write_report(work_dir: str, records: List[dict], title: str,
                 plot: bool = True) -> None:
    """``generations.json``, ``generations.md`` and (with ``plot``)
    ``generations.png`` (see :func:`plot_report`)."""
    atomic_write_text(
        json.dumps(records, indent=2), osp.join(work_dir, REPORT_JSON))
    atomic_write_text(
        render_markdown(records, title), osp.join(work_dir, REPORT_MD))
    if plot:
        plot_report(work_dir, records, title)


def plot_report(work_dir: str, records: List[dict], title: str) -> None:
    """``generations.png`` of a chain's records."""
    plot_chains({title: list(records)}, osp.join(work_dir, REPORT_PNG),
                title)
