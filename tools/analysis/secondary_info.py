"""Secondary information of models: per generation of chains, or of
checkpoints.

    # chains (reads gen_<m>/test_predictions.npz; no model is run)
    python tools/analysis/secondary_info.py work_dirs/ban_resnet18-w16_1xb128_fashion-mnist \
        work_dirs/tsd_resnet18-w16_1xb128_fashion-mnist --labels strict TSD \
        --groups fashion_mnist --k 3 --out-dir secondary_info/
    # checkpoints, evaluated on the config's test set
    python tools/analysis/secondary_info.py --config CONFIG \
        --checkpoints a.pth b.pth --groups cifar100 --k 5

--groups: 'cifar100' (its 20 superclasses), 'fashion_mnist' (tops,
footwear, trouser, bag) or a JSON file (a list: the group of each class
index; or a dict {class index: group}). Writes secondary_info.md/.json/.png
to --out-dir and prints the table. Chains given the same label (seeds of
one setting) are averaged per generation (the table says over how many).
"""
import argparse
import json
import os
import os.path as osp

from mmtolerant.evaluation.chain_results import (chain_labels,
                                                 load_chain_predictions)
from mmtolerant.evaluation.generation_report import topk_accuracy
from mmtolerant.evaluation.mean_std import mean_std
from mmtolerant.evaluation.secondary_info import (load_groups,
                                                  secondary_info,
                                                  secondary_info_table)


def checkpoint_predictions(config, checkpoints):
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmpretrain.registry import MODELS

    import mmtolerant  # noqa: F401
    from mmtolerant.evaluation.generation_report import predict_scores
    from mmtolerant.utils import extract_state_dict, safe_torch_load
    from mmtolerant.models.classifiers.plain_classifier import \
        plain_model_cfg
    from mmtolerant.utils.progress import Progress, track
    cfg = Config.fromfile(config)
    # The config's datasets are mmpretrain's (or ours, registered there).
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    loader_cfg = cfg.get('test_dataloader') or cfg.val_dataloader
    loader_cfg.sampler = dict(type='DefaultSampler', shuffle=False)
    loader = Runner.build_dataloader(loader_cfg)
    out = []
    # A line per checkpoint; its batches only when a prediction is slow.
    progress = Progress(len(checkpoints), '[secondary_info] progress',
                        unit='checkpoints', every=0, interval_s=0)
    for i, ckpt in enumerate(checkpoints):
        model = MODELS.build(plain_model_cfg(cfg))
        model.load_state_dict(
            extract_state_dict(safe_torch_load(ckpt), ckpt), strict=True)
        batches = track(loader, f'[secondary_info] {osp.basename(ckpt)}',
                        final=False)
        with torch.no_grad():
            out.append((i, predict_scores(model, batches)))
        progress.update(note=f'{osp.basename(ckpt)} predicted')
    return out


def plot(rows_by_chain, path, has_groups):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = ['mean_top1_prob', 'secondary_mass'] + (['group_lift']
                                                     if has_groups else [])
    titles = dict(mean_top1_prob='mean top-1 probability',
                  secondary_mass='top-K secondary mass',
                  group_lift='secondary classes in the primary\'s group\n'
                  '(ratio to chance)')
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6),
                             dpi=120)
    for ax, key in zip(axes, panels):
        for i, (name, rows) in enumerate(rows_by_chain.items()):
            ax.plot([r['index'] for r in rows], [r[key] for r in rows], 'o-',
                    color=f'C{i}', label=name)
        ax.set_title(titles[key], fontsize=9)
        ax.set_xlabel('generation m')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def averaged_rows(label, chains, k, groups, checkpoints):
    """A row per generation (or checkpoint) index: top-1 and the
    secondary information, averaged over the label's chains (with the std
    of top-1 and group_lift when there are several)."""
    per_index = {}
    for preds in chains:
        for index, (scores, y) in preds:
            per_index.setdefault(index, []).append(dict(
                top1=topk_accuracy(scores, y, 1),
                **secondary_info(scores, k, groups)))
    rows = []
    for index, stats in sorted(per_index.items()):
        name = (f'{label} M{index}' if label != 'checkpoints' else
                osp.basename(checkpoints[index]))
        if len(chains) > 1:
            name += f' (mean of {len(stats)})'
        row = dict(name=name, source=label, index=index, chains=len(stats))
        for key, value in stats[0].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                row[key] = value
                continue
            row[key], std = mean_std([s[key] for s in stats])
            if key in ('top1', 'group_lift') and len(stats) > 1:
                row[f'{key}_std'] = std
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='*', help='chain work_dirs')
    parser.add_argument('--labels', nargs='+', help='a name per work_dir')
    parser.add_argument('--config', help='config for --checkpoints')
    parser.add_argument('--checkpoints', nargs='+', default=[])
    parser.add_argument('--groups', help='cifar100, fashion_mnist or a JSON '
                        'file; without it, no group statistics')
    parser.add_argument('--k', type=int, default=3,
                        help='classes kept, primary included (default 3)')
    parser.add_argument('--out-dir', default='secondary_info')
    args = parser.parse_args()
    if not args.work_dirs and not args.checkpoints:
        parser.error('give chain work_dirs or --config with --checkpoints')
    if args.checkpoints and not args.config:
        parser.error('--checkpoints needs --config')
    groups = load_groups(args.groups) if args.groups else None

    try:
        labels = chain_labels(args.work_dirs, args.labels)
    except ValueError as e:
        parser.error(str(e))
    sources = {}  # label -> one list of (index, (scores, labels)) per chain
    try:
        for label, work_dir in zip(labels, args.work_dirs):
            sources.setdefault(label, []).append(
                load_chain_predictions(work_dir))
    except FileNotFoundError as e:
        raise SystemExit(e)
    if args.checkpoints:
        sources['checkpoints'] = [checkpoint_predictions(
            args.config, args.checkpoints)]

    rows_by_chain = {
        label: averaged_rows(label, chains, args.k, groups, args.checkpoints)
        for label, chains in sources.items()
    }
    all_rows = [row for rows in rows_by_chain.values() for row in rows]
    os.makedirs(args.out_dir, exist_ok=True)
    table = secondary_info_table(all_rows, groups is not None)
    print(table)
    with open(osp.join(args.out_dir, 'secondary_info.md'), 'w') as f:
        f.write(f'Secondary information, K={args.k}, groups='
                f'{args.groups}\n\n{table}\n')
    with open(osp.join(args.out_dir, 'secondary_info.json'), 'w') as f:
        json.dump(dict(k=args.k, groups=args.groups, rows=all_rows), f,
                  indent=2)
    plot(rows_by_chain, osp.join(args.out_dir, 'secondary_info.png'),
         groups is not None)
    print(f'wrote {args.out_dir}/secondary_info.{{md,json,png}}')


if __name__ == '__main__':
    main()
