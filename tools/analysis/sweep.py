"""Run a grid of chains (over eta, K, lambda, tau, seeds...) and tabulate them.

Every combination is an ordinary chain run by tools/train.py with
--cfg-options, in its own work_dir under --work-dir; finished combinations
are skipped and interrupted ones resumed, so a killed sweep continues where
it stopped. The reports are collected into sweep.json / sweep.md (mean and
std over seeds) and sweep.png.

    python tools/analysis/sweep.py configs/fashion_mnist/tsd_chain_r18n_fmnist.py \
        --grid generations.teacher_loss.eta=0.5,0.7,0.9 \
               generations.teacher_loss.k=2,3 \
        --seeds 0 1 2 --parallel 2 \
        --cfg-options train_cfg.max_epochs=5 generations.num_generations=3 \
        --work-dir work_dirs/sweep_eta_k

--parallel P runs P chains at once, each with (CPUs / P) torch threads.
--gpus N runs each chain with tools/dist_train.sh on N GPUs instead.
"""
import argparse
import itertools
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_grid(items):
    grid = {}
    for item in items:
        if '=' not in item:
            raise SystemExit(f'--grid takes key=v1,v2,...; got {item!r}')
        key, values = item.split('=', 1)
        grid[key] = [v for v in values.split(',') if v != '']
        if not grid[key]:
            raise SystemExit(f'--grid {key} has no values')
    return grid


def run_name(combo, seed):
    parts = [f'{k.split(".")[-1]}{v}' for k, v in combo]
    return '_'.join(parts + [f'seed{seed}'])


def launch(config, combo, seed, work_dir, args, log):
    options = [f'{k}={v}' for k, v in combo] + [f'randomness.seed={seed}']
    options += args.cfg_options or []
    if args.gpus:
        cmd = ['bash', osp.join(TOOLS, 'dist_train.sh'), config,
               str(args.gpus)]
    else:
        cmd = [sys.executable, osp.join(TOOLS, 'train.py'), config]
    cmd += ['--work-dir', work_dir]
    if osp.isdir(work_dir):
        cmd.append('--resume')
    cmd += ['--cfg-options'] + options
    env = dict(os.environ)
    if not args.gpus:
        threads = max(1, (os.cpu_count() or 1) // args.parallel)
        env['OMP_NUM_THREADS'] = str(threads)
    with open(log, 'a') as f:
        f.write(f'\n$ {" ".join(cmd)}\n')
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                              env=env).returncode


def summarise(records):
    last = records[-1]
    return dict(
        m0_top1=records[0]['top1'],
        m0_mean_top1_prob=records[0]['mean_top1_prob'],
        final_top1=last['top1'],
        best_student_top1=max(r['top1'] for r in records[1:]) if len(
            records) > 1 else None,
        final_ensemble_top1=last['ensemble_top1'],
        generations=len(records))


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return (statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='a chain config')
    parser.add_argument('--grid', nargs='+', required=True,
                        help='key=v1,v2,... (dotted config keys)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='key=value settings applied to every run')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--parallel', type=int, default=1)
    parser.add_argument('--gpus', type=int, default=0)
    parser.add_argument('--dry-run', action='store_true',
                        help='list the runs and stop')
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    combos = [tuple(zip(grid, values))
              for values in itertools.product(*grid.values())]
    runs = [(combo, seed) for combo in combos for seed in args.seeds]
    os.makedirs(args.work_dir, exist_ok=True)
    print(f'{len(runs)} chains ({len(combos)} settings x '
          f'{len(args.seeds)} seeds) in {args.work_dir}')
    if args.dry_run:
        for combo, seed in runs:
            print('  ', run_name(combo, seed))
        return

    def one(run):
        combo, seed = run
        name = run_name(combo, seed)
        wd = osp.join(args.work_dir, name)
        report = osp.join(wd, 'generations.json')
        done = osp.isfile(report) and osp.isfile(osp.join(wd, 'chain.json'))
        if done:
            with open(osp.join(wd, 'chain.json')) as f:
                want = json.load(f)['num_generations'] + 1
            with open(report) as f:
                done = len(json.load(f)) == want
        if done:
            print(f'  {name}: finished earlier', flush=True)
            return name, 0
        start = time.time()
        code = launch(args.config, combo, seed, wd, args,
                      osp.join(args.work_dir, f'{name}.log'))
        print(f'  {name}: {"done" if code == 0 else f"FAILED ({code})"} in '
              f'{time.time() - start:.0f} s', flush=True)
        return name, code

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results = list(pool.map(one, runs))
    failed = [name for name, code in results if code]

    rows = []
    for combo, seed in runs:
        report = osp.join(args.work_dir, run_name(combo, seed),
                          'generations.json')
        if not osp.isfile(report):
            continue
        with open(report) as f:
            records = json.load(f)
        rows.append(dict(setting=dict(combo), seed=seed,
                         **summarise(records)))
    table = ['| ' + ' | '.join(grid) + ' | seeds | M0 top-1 | M0 mean top-1 '
             'prob | final top-1 | best student top-1 | final ensemble |',
             '|' + ' --- |' * (len(grid) + 6)]
    aggregated = []
    for combo in combos:
        mine = [r for r in rows if r['setting'] == dict(combo)]
        if not mine:
            continue
        agg = dict(setting=dict(combo), seeds=[r['seed'] for r in mine])
        cells = []
        for key in ('m0_top1', 'm0_mean_top1_prob', 'final_top1',
                    'best_student_top1', 'final_ensemble_top1'):
            m, s = mean_std([r[key] for r in mine])
            agg[key] = m
            agg[f'{key}_std'] = s
            digits = 4 if 'prob' in key else 2
            cells.append('—' if m is None else
                         f'{m:.{digits}f} ± {s:.{digits}f}')
        aggregated.append(agg)
        table.append('| ' + ' | '.join(str(v) for _, v in combo) +
                     f' | {len(mine)} | ' + ' | '.join(cells) + ' |')
    with open(osp.join(args.work_dir, 'sweep.json'), 'w') as f:
        json.dump(dict(config=args.config, grid=grid, seeds=args.seeds,
                       cfg_options=args.cfg_options, runs=rows,
                       aggregated=aggregated), f, indent=2)
    with open(osp.join(args.work_dir, 'sweep.md'), 'w') as f:
        f.write(f'Sweep of {args.config} (mean ± std over seeds; '
                f'options {" ".join(args.cfg_options)})\n\n' +
                '\n'.join(table) + '\n')
    print('\n'.join(table))
    if aggregated:
        plot(aggregated, grid, osp.join(args.work_dir, 'sweep.png'))
    if failed:
        raise SystemExit(f'{len(failed)} chains failed: {failed} (see their '
                         'logs; rerun the same command to resume)')


def plot(aggregated, grid, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = list(grid)
    x_key = keys[0]
    others = keys[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    series = {}
    for agg in aggregated:
        label = ', '.join(f'{k.split(".")[-1]}={agg["setting"][k]}'
                          for k in others) or 'final generation'
        series.setdefault(label, []).append(agg)
    for i, (label, aggs) in enumerate(series.items()):
        xs = [float(a['setting'][x_key]) for a in aggs]
        ys = [a['final_top1'] for a in aggs]
        es = [a['final_top1_std'] for a in aggs]
        ax.errorbar(xs, ys, yerr=es, fmt='o-', color=f'C{i}', capsize=3,
                    label=label)
    ax.set_xlabel(x_key)
    ax.set_ylabel('final-generation top-1 (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == '__main__':
    main()
