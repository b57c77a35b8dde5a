"""Plot several chains side by side (e.g. strict vs tolerant vs LSR vs CP).

    python tools/analysis/plot_chains.py \
        work_dirs/strict_chain_r18n_fmnist work_dirs/tsd_chain_r18n_fmnist \
        --labels strict TSD --out chains.png --table chains.md

Reads each work_dir's generations.json; writes one PNG (top-1 and ensemble
per generation) and, with --table, a Markdown table with a column per chain.
"""
import argparse
import json
import os.path as osp

from mmtolerant.evaluation.generation_report import REPORT_JSON, plot_chains


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='+', help='chain work_dirs')
    parser.add_argument('--labels', nargs='+', help='one name per work_dir')
    parser.add_argument('--out', default='chains.png', help='PNG to write')
    parser.add_argument('--table', help='also write a Markdown table here')
    parser.add_argument('--title', default=None)
    args = parser.parse_args()
    labels = args.labels or [
        osp.basename(osp.normpath(d)) for d in args.work_dirs
    ]
    if len(labels) != len(args.work_dirs):
        raise SystemExit(f'{len(args.work_dirs)} work_dirs but '
                         f'{len(labels)} labels')
    chains = {}
    for label, work_dir in zip(labels, args.work_dirs):
        path = osp.join(work_dir, REPORT_JSON)
        if not osp.isfile(path):
            raise SystemExit(f'{path} does not exist: is {work_dir} a chain '
                             'work_dir with a finished generation?')
        with open(path) as f:
            chains[label] = json.load(f)
    plot_chains(chains, args.out, args.title)
    print(f'wrote {args.out}')
    if args.table:
        gens = sorted({r['generation'] for rs in chains.values() for r in rs})
        lines = [
            '| generation | ' + ' | '.join(
                f'{name} top-1 | {name} ensemble' for name in chains) + ' |',
            '|' + ' --- |' * (1 + 2 * len(chains))
        ]
        for g in gens:
            cells = []
            for records in chains.values():
                r = next((r for r in records if r['generation'] == g), None)
                cells += ['—', '—'] if r is None else [
                    f"{r['top1']:.2f}", f"{r['ensemble_top1']:.2f}"
                ]
            lines.append(f'| M{g} | ' + ' | '.join(cells) + ' |')
        with open(args.table, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        print(f'wrote {args.table}')


if __name__ == '__main__':
    main()
