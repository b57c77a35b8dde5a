"""What a chain adds to its generations' training, measured on a real chain.

Runs a chain with ``tools/train.py`` (default: the Fashion-MNIST study
config, M0..M2) and reads each ``gen_<m>/generation.json``:

- ``build``:  building the generation's runner (config, model, the frozen
              teacher from the previous export, hooks, logger);
- ``finish``: what follows training: the export, the test-set predictions
              (taken from the final validation pass when the test set is
              the validation set), the training-set pass of
              ``report_train`` and the report's statistics (not counted:
              writing the report's two tables, milliseconds, and its plot,
              drawn in a background thread during the next generation);

each as a share of the generation's wall time (build + training + finish).
Also printed: the chain's wall time against the sum of its generations',
which is what happens between generations (the hand-over itself).

    python benchmarks/chain_overhead.py --threads 1
    python benchmarks/chain_overhead.py --config configs/tsd/ban_small-convnet_1xb128_fashion-mnist-5k.py \
        --generations 1
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--config',
        default='configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py')
    parser.add_argument('--generations', type=int, default=2,
                        help='N: the chain trains M0..MN')
    parser.add_argument('--threads', type=int, default=1,
                        help='OMP threads of the training process (logged)')
    parser.add_argument('--work-dir', help='keep the chain here')
    parser.add_argument('--cfg-options', nargs='+', default=[])
    parser.add_argument('--out', help='write the rows as JSON here')
    args = parser.parse_args()
    if any(o.startswith('generations.num_generations=')
           for o in args.cfg_options):
        raise SystemExit('set the number of generations with --generations '
                         'N (the script reads gen_0..gen_N), not with '
                         '--cfg-options generations.num_generations')

    work_dir = args.work_dir or tempfile.mkdtemp(prefix='chain_overhead_')
    cmd = [
        sys.executable, osp.join(REPO, 'tools', 'train.py'), args.config,
        '--work-dir', work_dir, '--cfg-options',
        f'generations.num_generations={args.generations}'
    ] + args.cfg_options
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f'{" ".join(cmd)}\n({args.threads} thread(s))', flush=True)
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                          text=True)
    total = time.time() - started
    if proc.returncode:
        raise SystemExit(proc.stderr[-4000:])

    rows = []
    print('\n| gen | wall (s) | build (s) | finish (s) | build share | '
          'finish share | build + finish share | test predictions from |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    for m in range(args.generations + 1):
        with open(osp.join(work_dir, f'gen_{m}', 'generation.json')) as f:
            r = json.load(f)
        wall = r['wall_time_s'] + r['finish_time_s']
        row = dict(generation=m, wall_s=wall, build_s=r['build_time_s'],
                   finish_s=r['finish_time_s'],
                   build_share=r['build_time_s'] / wall,
                   finish_share=r['finish_time_s'] / wall,
                   test_predictions_from=r.get('test_predictions_from'))
        row['overhead_share'] = row['build_share'] + row['finish_share']
        rows.append(row)
        print(f"| M{m} | {wall:.1f} | {row['build_s']:.2f} | "
              f"{row['finish_s']:.2f} | {100 * row['build_share']:.2f}% | "
              f"{100 * row['finish_share']:.2f}% | "
              f"{100 * row['overhead_share']:.2f}% | "
              f"{row['test_predictions_from']} |")
    med = statistics.median(r['overhead_share'] for r in rows)
    generations = sum(r['wall_s'] for r in rows)
    print(f'\nmedian build + finish share: {100 * med:.2f}%; the process took '
          f'{total:.0f} s, its generations {generations:.0f} s (the rest: '
          'imports, start-up and the hand-over between generations)')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(command=cmd, threads=args.threads, rows=rows,
                           process_s=total), f, indent=2)
    if not args.work_dir:
        print(f'chain kept in {work_dir}')


if __name__ == '__main__':
    main()
