"""Plot several chains side by side (e.g. strict vs tolerant vs LSR vs CP).

    python tools/analysis/plot_chains.py \
        work_dirs/ban_resnet18-w16_1xb128_fashion-mnist work_dirs/tsd_resnet18-w16_1xb128_fashion-mnist \
        --labels strict TSD --out chains.png --table chains.md

Reads each work_dir's generations.json; writes one PNG (top-1 and ensemble
per generation) and, with --table, a Markdown table with a column per chain.
"""
import argparse

from mmtolerant.evaluation.chain_results import (chain_labels,
                                                 load_chain_report)
from mmtolerant.evaluation.generation_report import plot_chains


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='+', help='chain work_dirs')
    parser.add_argument('--labels', nargs='+', help='one name per work_dir')
    parser.add_argument('--out', default='chains.png', help='PNG to write')
    parser.add_argument('--table', help='also write a Markdown table here')
    parser.add_argument('--title', default=None)
    args = parser.parse_args()
    try:
        labels = chain_labels(args.work_dirs, args.labels)
    except ValueError as e:
        parser.error(str(e))
    try:
        chains = {label: load_chain_report(work_dir)
                  for label, work_dir in zip(labels, args.work_dirs)}
    except FileNotFoundError as e:
        raise SystemExit(e)
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
