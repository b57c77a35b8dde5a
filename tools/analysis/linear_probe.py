"""Linear-probe transfer of each generation of chains (or of checkpoints).

Frozen pre-logit features of each model on a second dataset; a logistic
regression (scikit-learn) fitted on its training split, scored on its test
split. The probe data comes from a config defining ``probe_train`` and
``probe_test`` datasets, e.g. scikit-learn's digits at 28x28 for
Fashion-MNIST models:

    python tools/analysis/linear_probe.py work_dirs/ban_resnet18-w16_1xb128_fashion-mnist \
        work_dirs/tsd_resnet18-w16_1xb128_fashion-mnist --labels strict TSD \
        --probe configs/_base_/datasets/digits_probe_28px.py --out probe.json

For CIFAR-100 models, a probe config on CIFAR-10 (for users who have it):
    probe_train = dict(type='CIFAR10', data_root='data/cifar10', split='train',
                       pipeline=[dict(type='PackInputs')])
"""
import argparse
import json
import os.path as osp
import time

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmpretrain.registry import DATASETS, MODELS

from mmtolerant.evaluation.chain_results import chain_labels, generation_files
from mmtolerant.evaluation.linear_probe import extract_features, probe_accuracy
from mmtolerant.evaluation.mean_std import format_mean_std, mean_std
from mmtolerant.utils import extract_state_dict, safe_torch_load
from mmtolerant.utils.chain_layout import EXPORT_CFG, EXPORT_CKPT
from mmtolerant.utils.progress import Progress, track


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='*', help='chain work_dirs')
    parser.add_argument('--labels', nargs='+')
    parser.add_argument('--checkpoints', nargs='+', default=[],
                        help='exported_model.pth files (their .py beside)')
    parser.add_argument('--probe', required=True,
                        help='config with probe_train and probe_test')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--c', type=float, default=1.0,
                        help='inverse regularisation of the probe')
    parser.add_argument('--out', help='write the rows to this JSON file')
    args = parser.parse_args()
    try:
        args.labels = chain_labels(args.work_dirs, args.labels)
    except ValueError as e:
        parser.error(str(e))
    return args


def models_to_probe(work_dirs, labels, checkpoints):
    """``[(name, checkpoint, config)]``: each generation of each chain, then
    the checkpoints."""
    models = []
    for label, work_dir in zip(labels, work_dirs):
        try:
            found = generation_files(work_dir, EXPORT_CKPT)
        except FileNotFoundError as e:
            raise SystemExit(e)
        models += [(f'{label} M{m}', ckpt,
                    osp.join(osp.dirname(ckpt), EXPORT_CFG))
                   for m, ckpt in found]
    return models + [(osp.basename(ckpt), ckpt, osp.splitext(ckpt)[0] + '.py')
                     for ckpt in checkpoints]


def probe_loaders(probe_config, batch_size):
    probe = Config.fromfile(probe_config)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        datasets = {
            split: DATASETS.build(probe[f'probe_{split}'])
            for split in ('train', 'test')
        }
    return {
        split: torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=False,
            collate_fn=pseudo_collate)
        for split, ds in datasets.items()
    }


def probe_model(name, ckpt, cfg_path, loaders, c):
    """The model's row, and the seconds its feature extraction and its
    probe's fit took."""
    cfg = Config.fromfile(cfg_path)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    model.load_state_dict(
        extract_state_dict(safe_torch_load(ckpt), ckpt), strict=True)
    started = time.time()
    # A split's batches show only when its extraction is slow.
    feats = {
        s: extract_features(
            model, track(l, f'[linear_probe] {name} {s} features',
                         final=False))
        for s, l in loaders.items()
    }
    extracted = time.time()
    acc = probe_accuracy(feats['train'], feats['test'], c=c)
    row = dict(model=name, checkpoint=ckpt, probe_top1=acc,
               feature_dim=int(feats['train'][0].shape[1]))
    return row, (extracted - started, time.time() - extracted)


def main():
    args = parse_args()
    models = models_to_probe(args.work_dirs, args.labels, args.checkpoints)
    loaders = probe_loaders(args.probe, args.batch_size)
    rows = []
    # A line per model, through the logger; the table is printed whole at
    # the end, so that the progress lines do not cut through it.
    progress = Progress(len(models), '[linear_probe] progress', unit='models',
                        every=0, interval_s=0)
    for name, ckpt, cfg_path in models:
        row, (features_s, fit_s) = probe_model(name, ckpt, cfg_path,
                                               loaders, args.c)
        rows.append(row)
        progress.update(note=f"{name}: top-1 {row['probe_top1']:.2f} "
                        f'(features {features_s:.1f} s, fit {fit_s:.1f} s)')
    print('| model | linear-probe top-1 |\n| --- | --- |')
    for row in rows:
        print(f"| {row['model']} | {row['probe_top1']:.2f} |")
    summary = summarise(rows)
    if summary:
        print('\n| chain | model | runs | linear-probe top-1 (mean ± std) |'
              '\n| --- | --- | --- | --- |')
        for row in summary:
            print(f"| {row['label']} | {row['model']} | {row['runs']} | "
                  f"{format_mean_std(row['mean'], row['std'])} |")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(probe=args.probe, rows=rows, summary=summary), f,
                      indent=2)


def summarise(rows):
    """Mean ± std per label and generation when a label names several
    chains (seeds of one setting); [] otherwise."""
    groups = {}
    for row in rows:
        label, _, model = row['model'].rpartition(' ')
        if label:
            groups.setdefault((label, model), []).append(row['probe_top1'])
    if all(len(v) < 2 for v in groups.values()):
        return []
    summary = []
    for (label, model), v in groups.items():
        mean, std = mean_std(v)
        summary.append(dict(label=label, model=model, runs=len(v), mean=mean,
                            std=std))
    return summary


if __name__ == '__main__':
    main()
