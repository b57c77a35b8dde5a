"""Accuracy of generation ensembles of finished chain work_dirs.

The ensemble of a set of generations averages their softmax outputs on the
test set (saved by the chain in gen_<m>/test_predictions.npz).

    # M1..Mm for every m, plus the whole chain
    python tools/analysis/ensemble.py work_dirs/tsd_resnet18-w8_1xb64_digits
    # chosen sets
    python tools/analysis/ensemble.py WORK_DIR --sets 1,2,3 0,3 --out ens.json
"""
import argparse
import json

from mmtolerant.evaluation.chain_results import generation_files
from mmtolerant.evaluation.generation_report import (PREDICTIONS,
                                                     ensemble_scores,
                                                     load_predictions,
                                                     topk_accuracy)


def parse_set(text):
    try:
        members = sorted({int(x) for x in text.split(',') if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'a set is comma-separated generation numbers, got {text!r}')
    if not members:
        raise argparse.ArgumentTypeError(f'empty set {text!r}')
    return members


def evaluate(work_dir, sets):
    try:
        paths = dict(generation_files(work_dir, PREDICTIONS))
    except FileNotFoundError as e:
        raise SystemExit(e)
    available = list(paths)
    if sets is None:
        students = [m for m in available if m >= 1]
        sets = [students[:i] for i in range(1, len(students) + 1)]
        sets.append(available)
    cache = {}
    rows = []
    for members in sets:
        missing = [m for m in members if m not in available]
        if missing:
            raise SystemExit(f'generations {missing} are not finished in '
                             f'{work_dir} (finished: {available})')
        scores = []
        labels = None
        for m in members:
            if m not in cache:
                cache[m] = load_predictions(paths[m])
            s, y = cache[m]
            if labels is not None and (len(y) != len(labels)
                                       or (y != labels).any()):
                raise SystemExit(f'generation {m} was tested on other '
                                 'samples than the rest of the set')
            labels = y
            scores.append(s)
        mean = ensemble_scores(scores)
        rows.append(
            dict(
                members=members,
                top1=topk_accuracy(mean, labels, 1),
                top5=topk_accuracy(mean, labels, 5),
                num_samples=int(len(labels))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help='work_dir of a chain')
    parser.add_argument(
        '--sets',
        nargs='+',
        type=parse_set,
        help='generation sets such as 1,2,3 (default: M1..Mm for each m, '
        'and all generations)')
    parser.add_argument('--out', help='also write the rows to this JSON file')
    args = parser.parse_args()
    rows = evaluate(args.work_dir, args.sets)
    print('| ensemble of | top-1 | top-5 |')
    print('| --- | --- | --- |')
    for row in rows:
        names = '+'.join(f'M{m}' for m in row['members'])
        print(f"| {names} | {row['top1']:.2f} | {row['top5']:.2f} |")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
