"""Run chains over configs x a grid (eta, K, lambda, tau...) x seeds and
tabulate them.

Every run is an ordinary chain run by tools/train.py with --cfg-options, in
its own work_dir under --work-dir; finished runs are skipped and interrupted
ones resumed, so a killed sweep continues where it stopped. The reports are
collected into:

- sweep.md / sweep.json: per setting, mean ± std over seeds of the
  patriarch, the final generation, the best student and the final ensemble;
- generations.md / sweep_generations.png: per setting and generation, mean ±
  std over seeds of top-1, the ensemble M1..Mm, the mean top-1 probability
  (and the training set's, with generations.report_train), and with
  --baseline the paired difference to the baseline run of the same seed.

A grid over one chain config:

    python tools/analysis/sweep.py configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py \
        --grid generations.teacher_loss.eta=0.6,0.8,1.0 generations.teacher_loss.k=2,3 \
        --seeds 0 1 2 --parallel 2 --cfg-options generations.num_generations=2 \
        --work-dir work_dirs/sweep_eta_k

Several chain configs with paired seeds (a setting is named by its config
file, then its grid values):

    python tools/analysis/sweep.py configs/tsd/{ban,tsd,ban-lsr,ban-cp}_small-convnet_1xb128_fashion-mnist-5k.py \
        --seeds 0 1 2 --parallel 2 --baseline ban_small-convnet_1xb128_fashion-mnist-5k \
        --work-dir work_dirs/fashion-mnist-5k_study

--parallel P runs P chains at once, each with (CPUs / P) torch threads.
--gpus N runs each chain with tools/dist_train.sh on N GPUs instead.
"""
import argparse
import itertools
import json
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from mmtolerant.evaluation.chain_results import load_chain_report
from mmtolerant.evaluation.mean_std import format_mean_std, mean_std
from mmtolerant.utils.chain_layout import CHAIN_FILE
from mmtolerant.utils.progress import Progress

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


def config_name(config):
    return osp.splitext(osp.basename(config))[0]


def setting_name(config, combo, several_configs):
    parts = [f'{k.split(".")[-1]}{v}' for k, v in combo]
    if several_configs:
        parts.insert(0, config_name(config))
    return '_'.join(parts) or config_name(config)


def run_name(setting, seed):
    return f'{setting}_seed{seed}'


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
        m0_train_top1=records[0].get('train_top1'),
        final_top1=last['top1'],
        best_student_top1=max(r['top1'] for r in records[1:]) if len(
            records) > 1 else None,
        final_ensemble_top1=last['ensemble_top1'],
        generations=len(records))


def cell(values, digits=2):
    return format_mean_std(*mean_std(values), digits)


SUMMARY_KEYS = ('m0_top1', 'm0_mean_top1_prob', 'm0_train_top1',
                'final_top1', 'best_student_top1', 'final_ensemble_top1')

GEN_KEYS = (('top1', 'top-1', 2), ('ensemble_top1', 'ensemble M1..Mm', 2),
            ('mean_top1_prob', 'mean top-1 prob', 3),
            ('train_top1', 'train top-1', 2),
            ('train_mean_top1_prob', 'train mean top-1 prob', 3))


def aggregate(settings, rows):
    """Per setting, mean ± std over seeds of the run summaries; and the
    sweep.md table."""
    table = ['| setting | seeds | M0 top-1 | M0 mean top-1 prob | M0 train '
             'top-1 | final top-1 | best student top-1 | final ensemble |',
             '|' + ' --- |' * 8]
    aggregated = []
    for setting, (config, combo) in settings.items():
        mine = [r for r in rows if r['name'] == setting]
        if not mine:
            continue
        agg = dict(name=setting, config=config, setting=dict(combo),
                   seeds=[r['seed'] for r in mine])
        cells = []
        for key in SUMMARY_KEYS:
            values = [r[key] for r in mine]
            agg[key], agg[f'{key}_std'] = mean_std(values)
            cells.append(cell(values, 4 if 'prob' in key else 2))
        aggregated.append(agg)
        table.append(f'| {setting} | {len(mine)} | ' + ' | '.join(cells) +
                     ' |')
    return aggregated, table


def per_generation(settings, chains, seeds, baseline):
    """{setting: [{generation, n, key: [mean, std], ...}]} and its table."""
    out = {}
    lines = []
    for setting in settings:
        mine = {s: chains[(setting, s)] for s in seeds
                if (setting, s) in chains}
        if not mine:
            continue
        base = {s: chains[(baseline, s)] for s in seeds
                if baseline and (baseline, s) in chains}
        show = [k for k in GEN_KEYS
                if any(k[0] in r for rs in mine.values() for r in rs)]
        paired = bool(base) and setting != baseline
        header = ['gen', 'seeds'] + [k[1] for k in show] + (
            [f'top-1 − {baseline} (paired)',
             f'ensemble − {baseline} (paired)'] if paired else [])
        lines += [f'### {setting}', '', '| ' + ' | '.join(header) + ' |',
                  '|' + ' --- |' * len(header)]
        rows = []
        for m in range(max(len(rs) for rs in mine.values())):
            row, cells = generation_row(m, mine, show,
                                        base if paired else None)
            rows.append(row)
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
        out[setting] = rows
    return out, lines


def generation_row(m, chains, show, base=None):
    """Generation m of one setting over its seeds' chains: its JSON row and
    table cells; with ``base`` (the baseline's chains by seed), the paired
    differences to it."""
    recs = {s: rs[m] for s, rs in chains.items() if len(rs) > m}
    row = dict(generation=m, n=len(recs))
    cells = [f'M{m}', str(len(recs))]
    for key, _, digits in show:
        values = [r.get(key) for r in recs.values()]
        row[key] = list(mean_std(values))
        cells.append(cell(values, digits))
    for key in ('top1', 'ensemble_top1') if base else ():
        diffs = [r[key] - base[s][m][key] for s, r in recs.items()
                 if s in base and len(base[s]) > m]
        row[f'{key}_minus_baseline'] = list(mean_std(diffs))
        row[f'{key}_wins'] = sum(d > 0 for d in diffs)
        cells.append(
            cell(diffs) + f' ({sum(d > 0 for d in diffs)}/'
            f'{len(diffs)} above)' if diffs else '—')
    return row, cells


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', help='chain configs')
    parser.add_argument('--grid', nargs='+', default=[],
                        help='key=v1,v2,... (dotted config keys)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='key=value settings applied to every run')
    parser.add_argument('--baseline', default=None,
                        help='setting name (as printed by --dry-run) to '
                        'which every other setting is compared seed by seed')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--parallel', type=int, default=1)
    parser.add_argument('--gpus', type=int, default=0)
    parser.add_argument('--dry-run', action='store_true',
                        help='list the runs and stop')
    return parser.parse_args()


def plan(args):
    """The grid, the settings ``{name: (config, combo)}`` (configs x grid
    values) and the runs ``[(setting, seed)]`` (settings x seeds)."""
    for config in args.configs:
        if not osp.isfile(config):
            raise SystemExit(f'config {config!r} does not exist')
    grid = parse_grid(args.grid)
    combos = [tuple(zip(grid, values))
              for values in itertools.product(*grid.values())]
    several = len(args.configs) > 1
    settings = {}
    for config in args.configs:
        for combo in combos:
            name = setting_name(config, combo, several)
            if name in settings:
                raise SystemExit(f'two settings are both named {name!r}')
            settings[name] = (config, combo)
    if args.baseline is not None and args.baseline not in settings:
        raise SystemExit(f'--baseline {args.baseline!r} is not one of the '
                         f'settings {list(settings)}')
    runs = [(name, seed) for name in settings for seed in args.seeds]
    return grid, settings, runs


def is_finished(work_dir):
    """Whether the run's report has every generation its chain.json
    asks for."""
    chain_file = osp.join(work_dir, CHAIN_FILE)
    if not osp.isfile(chain_file):
        return False
    try:
        records = load_chain_report(work_dir)
    except FileNotFoundError:
        return False
    with open(chain_file) as f:
        return len(records) == json.load(f)['num_generations'] + 1


def run_one(run, settings, args):
    """Launch one chain; returns its exit code and seconds taken."""
    setting, seed = run
    config, combo = settings[setting]
    name = run_name(setting, seed)
    start = time.time()
    code = launch(config, combo, seed, osp.join(args.work_dir, name), args,
                  osp.join(args.work_dir, f'{name}.log'))
    return code, time.time() - start


def run_all(args, settings, runs):
    """Every run not finished earlier, ``--parallel`` at a time, with a
    progress line as each ends; the names of those that failed."""
    todo = []
    for run in runs:
        name = run_name(*run)
        if is_finished(osp.join(args.work_dir, name)):
            print(f'  {name}: finished earlier', flush=True)
        else:
            todo.append(run)
    parallel = max(1, args.parallel)
    # Runs finished earlier take no time: the ETA counts only those to do.
    progress = Progress(len(todo), '[sweep] progress', unit='chains', every=0,
                        interval_s=0)
    failed = set()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run_one, run, settings, args): run_name(*run)
                   for run in todo}
        for future in as_completed(futures):
            name = futures[future]
            code, seconds = future.result()
            if code:
                failed.add(name)
            # The pool starts a queued run as soon as one ends.
            unfinished = len(todo) - progress.done - 1
            running = min(parallel, unfinished)
            progress.update(note=(
                f'{name} {"done" if code == 0 else f"FAILED ({code})"} in '
                f'{seconds:.0f} s; {running} running, '
                f'{unfinished - running} waiting'))
    return [run_name(*run) for run in todo if run_name(*run) in failed]


def collect(work_dir, settings, runs):
    """The records of every run that has a report, ``{(setting, seed):
    records}``, and a summary row per run."""
    rows, chains = [], {}
    for setting, seed in runs:
        try:
            records = load_chain_report(
                osp.join(work_dir, run_name(setting, seed)))
        except FileNotFoundError:
            continue
        chains[(setting, seed)] = records
        config, combo = settings[setting]
        rows.append(dict(name=setting, config=config, setting=dict(combo),
                         seed=seed, **summarise(records)))
    return rows, chains


def write(args, grid, settings, rows, chains):
    """sweep.json/.md/.png and generations.md, sweep_generations.png; the
    tables are printed too."""
    aggregated, table = aggregate(settings, rows)
    generations, gen_lines = per_generation(list(settings), chains,
                                            args.seeds, args.baseline)
    with open(osp.join(args.work_dir, 'sweep.json'), 'w') as f:
        json.dump(dict(configs=args.configs, grid=grid, seeds=args.seeds,
                       cfg_options=args.cfg_options, baseline=args.baseline,
                       runs=rows, aggregated=aggregated,
                       generations=generations), f, indent=2)
    title = (f'Sweep of {" ".join(args.configs)} (mean ± std over seeds '
             f'{args.seeds}; options {" ".join(args.cfg_options)})')
    with open(osp.join(args.work_dir, 'sweep.md'), 'w') as f:
        f.write(title + '\n\n' + '\n'.join(table) + '\n')
    with open(osp.join(args.work_dir, 'generations.md'), 'w') as f:
        f.write(title + '\n\n' + '\n'.join(gen_lines))
    print('\n'.join(table))
    print()
    print('\n'.join(gen_lines))
    if aggregated and grid:
        plot_grid(aggregated, grid, osp.join(args.work_dir, 'sweep.png'))
    if generations:
        plot_generations(generations,
                         osp.join(args.work_dir, 'sweep_generations.png'))


def main():
    args = parse_args()
    grid, settings, runs = plan(args)
    os.makedirs(args.work_dir, exist_ok=True)
    print(f'{len(runs)} chains ({len(settings)} settings x '
          f'{len(args.seeds)} seeds) in {args.work_dir}')
    if args.dry_run:
        for name, seed in runs:
            print('  ', run_name(name, seed))
        return
    failed = run_all(args, settings, runs)
    rows, chains = collect(args.work_dir, settings, runs)
    write(args, grid, settings, rows, chains)
    if failed:
        raise SystemExit(f'{len(failed)} chains failed: {failed} (see their '
                         'logs; rerun the same command to resume)')


def plot_grid(aggregated, grid, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = list(grid)
    x_key = keys[0]
    others = keys[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    series = {}
    for agg in aggregated:
        label = ', '.join([osp.splitext(osp.basename(agg['config']))[0]] * (
            len({a['config'] for a in aggregated}) > 1) + [
                f'{k.split(".")[-1]}={agg["setting"][k]}' for k in others
            ]) or 'final generation'
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


def plot_generations(generations, path):
    """Left: top-1 per generation (solid, ± std) and ensemble M1..Mm
    (dashed); right: mean top-1 probability on test (solid) and train
    (dotted, with report_train). One colour per setting."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, ax_conf) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for i, (name, rows) in enumerate(generations.items()):
        color = f'C{i % 10}'
        gens = [r['generation'] for r in rows]

        def series(key):
            return ([r[key][0] for r in rows], [r[key][1] for r in rows])

        ys, es = series('top1')
        ax.errorbar(gens, ys, yerr=es, fmt='o-', color=color, capsize=3,
                    label=name)
        ys, _ = series('ensemble_top1')
        ax.plot(gens[1:], ys[1:], '--', color=color, alpha=0.6)
        ys, es = series('mean_top1_prob')
        ax_conf.errorbar(gens, ys, yerr=es, fmt='o-', color=color,
                         capsize=3, label=f'{name} (test)')
        if all('train_mean_top1_prob' in r and r['train_mean_top1_prob'][0]
               is not None for r in rows):
            ys, _ = series('train_mean_top1_prob')
            ax_conf.plot(gens, ys, ':', color=color)
    ax.set_xlabel('generation m')
    ax.set_ylabel('top-1 (%)  (dashed: ensemble M1..Mm)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax_conf.set_xlabel('generation m')
    ax_conf.set_ylabel('mean top-1 probability (dotted: train)')
    ax_conf.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == '__main__':
    main()
