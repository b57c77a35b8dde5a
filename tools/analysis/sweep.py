r"""Run chains over configs x a grid (eta, K, lambda, tau...) x seeds and
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

    python tools/analysis/sweep.py \
        configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py \
        --grid generations.teacher_loss.eta=0.6,0.8,1.0 \
        generations.teacher_loss.k=2,3 --seeds 0 1 2 --parallel 2 \
        --cfg-options generations.num_generations=2 \
        --work-dir work_dirs/sweep_eta_k

Several chain configs with paired seeds (a setting is named by its config
file, then its grid values):

    python tools/analysis/sweep.py \
        configs/tsd/ban_small-convnet_1xb128_fashion-mnist-5k.py \
        configs/tsd/tsd_small-convnet_1xb128_fashion-mnist-5k.py \
        configs/tsd/ban-lsr_small-convnet_1xb128_fashion-mnist-5k.py \
        configs/tsd/ban-cp_small-convnet_1xb128_fashion-mnist-5k.py \
        --seeds 0 1 2 --parallel 2 \
        --baseline ban_small-convnet_1xb128_fashion-mnist-5k \
        --work-dir work_dirs/fashion-mnist-5k_study

On this machine (--launcher pool, the default), --parallel P runs P chains
at once, each with (CPUs / P) torch threads; --gpus N runs each chain with
tools/dist_train.sh on N GPUs instead, and the P chains running at once get
N GPUs each of CUDA_VISIBLE_DEVICES (else of all GPUs) and torchrun ports
--port, --port + 1, ... (29500 by default).

On a SLURM cluster, every chain is one job of a job array, submitted
through submitit (pip install 'mmtolerant[cluster]'), with one task and
--gpus GPUs:

    python tools/analysis/sweep.py \
        configs/tsd/{ban,tsd}_resnet18-w16_1xb128_fashion-mnist.py \
        --seeds 0 1 2 --baseline ban_resnet18-w16_1xb128_fashion-mnist \
        --launcher slurm --partition gpu --gpus 1 --cpus-per-task 8 \
        --time 240 --array-parallelism 4 --slurm-args qos=normal \
        --work-dir work_dirs/fashion-mnist_resnet18_study

--signal-delay seconds (120) before its --time limit, SLURM warns the job
(submitit's SIGUSR2): the job sends the chain SIGUSR1, the chain saves at
its next iteration and exits with code 75, and submitit requeues the job
(at most --max-requeues times after a time limit; a preemption that SLURM
signals so is requeued too, uncounted). The requeued job resumes the chain
(--resume). The sweep waits for the jobs, with a progress line as each
ends, then tabulates; Ctrl-C cancels the jobs. Rerunning the same command
skips finished chains and submits the others again, which resume (so do
not rerun it while its jobs still run: a chain's work_dir takes one run at
a time). submitit's logs are in work_dir/submitit/, each chain's output in
work_dir/<run>.log. --launcher submitit-local runs the same jobs on this
machine (--parallel at a time, GPUs as the pool) with the same options: a
dry run of the cluster path, and what the tests use.
"""
import argparse
import itertools
import json
import os
import os.path as osp

from mmtolerant.evaluation.chain_results import load_chain_report
from mmtolerant.evaluation.mean_std import format_mean_std, mean_std
from mmtolerant.utils.chain_jobs import (DEFAULT_PORT, LAUNCHERS, ChainRun,
                                         local_slots, run_pool)
from mmtolerant.utils.chain_layout import CHAIN_FILE
from mmtolerant.utils.submitit_jobs import JobOptions, run_jobs

# train.py and dist_train.sh, which every chain runs: the sweep runs from a
# checkout (an installed package has no tools folder).
TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
SLURM_ONLY = ('partition', 'cpus_per_task', 'array_parallelism',
              'slurm_args')


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


def chain_options(combo, seed, cfg_options):
    """The ``--cfg-options`` of one run: its grid values, its seed, then
    the options of every run."""
    return ([f'{k}={v}' for k, v in combo] + [f'randomness.seed={seed}'] +
            list(cfg_options or []))


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
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2])
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
    parser.add_argument('--dry-run', action='store_true',
                        help='list the runs and stop')
    launch = parser.add_argument_group('launching')
    launch.add_argument(
        '--launcher', choices=LAUNCHERS, default='pool',
        help='pool: processes on this machine (default); slurm: a SLURM job '
        'array through submitit, one job per chain, requeued after a time '
        "limit or a preemption; submitit-local: submitit's local executor, "
        'the same jobs on this machine (a dry run of the cluster path; the '
        'tests use it)')
    launch.add_argument('--parallel', type=int, default=1,
                        help='chains at once on this machine (pool, '
                        'submitit-local)')
    launch.add_argument('--gpus', type=int, default=0,
                        help='GPUs per chain (tools/dist_train.sh); on this '
                        'machine each chain running at once gets its own')
    launch.add_argument('--port', type=int, default=DEFAULT_PORT,
                        help='torchrun port of the first chain running at '
                        'once on this machine; the others take the next ones')
    launch.add_argument('--time', type=int, default=24 * 60,
                        help="minutes per job before it is requeued (within "
                        "the partition's limit; default one day)")
    launch.add_argument('--partition', help='SLURM partition')
    launch.add_argument('--cpus-per-task', type=int,
                        help='CPUs per job (SLURM)')
    launch.add_argument('--array-parallelism', type=int,
                        help="chains at once on SLURM (the array's %%N; "
                        'default: all)')
    launch.add_argument('--signal-delay', type=int, default=120,
                        help='seconds before its time limit that a job is '
                        'told to stop (the chain saves and is requeued)')
    launch.add_argument('--max-requeues', type=int, default=10,
                        help='requeues of a job after its time limit '
                        '(preemptions do not count)')
    launch.add_argument('--slurm-args', nargs='+', default=[],
                        help="key=value: submitit's SLURM parameters (qos, "
                        'account, constraint, mem_gb, setup...) or any other '
                        'sbatch option')
    args = parser.parse_args()
    if args.launcher == 'pool':
        given = [f'--{k.replace("_", "-")}' for k in SLURM_ONLY
                 if getattr(args, k)]
        if given:
            parser.error(f'{" ".join(given)}: for --launcher slurm (or its '
                         'dry run, submitit-local), not pool')
    for key in ('parallel', 'time', 'signal_delay'):
        if getattr(args, key) < 1:
            parser.error(f'--{key.replace("_", "-")} must be >= 1, got '
                         f'{getattr(args, key)}')
    if args.gpus < 0:
        parser.error(f'--gpus must be >= 0, got {args.gpus}')
    return args


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


def todo_runs(args, runs):
    """The runs not finished earlier (those are named as such)."""
    todo = []
    for run in runs:
        name = run_name(*run)
        if is_finished(osp.join(args.work_dir, name)):
            print(f'  {name}: finished earlier', flush=True)
        else:
            todo.append(run)
    return todo


def chain_runs(args, settings, runs):
    """The :class:`ChainRun` of each run: its grid values and seed as
    ``--cfg-options``, its work_dir and log under ``--work-dir``."""
    chains = []
    for setting, seed in runs:
        config, combo = settings[setting]
        name = run_name(setting, seed)
        chains.append(
            ChainRun(name, config,
                     chain_options(combo, seed, args.cfg_options),
                     osp.join(args.work_dir, name),
                     osp.join(args.work_dir, f'{name}.log')))
    return chains


def job_options(args):
    """The launching arguments the submitit jobs take."""
    return JobOptions(
        launcher=args.launcher, work_dir=args.work_dir, tools=TOOLS,
        gpus=args.gpus, parallel=args.parallel, time=args.time,
        signal_delay=args.signal_delay, max_requeues=args.max_requeues,
        partition=args.partition, cpus_per_task=args.cpus_per_task,
        array_parallelism=args.array_parallelism,
        slurm_args=args.slurm_args)


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
    todo = chain_runs(args, settings, todo_runs(args, runs))
    unfinished = []
    if todo and args.launcher == 'slurm':
        unfinished = run_jobs(todo, job_options(args))
    elif todo:
        # Checked before any chain starts.
        slots = local_slots(args.gpus, args.parallel, args.port)
        if args.launcher == 'pool':
            unfinished = run_pool(todo, TOOLS, slots, args.gpus)
        else:
            unfinished = run_jobs(todo, job_options(args), slots)
    rows, chains = collect(args.work_dir, settings, runs)
    write(args, grid, settings, rows, chains)
    if unfinished:
        raise SystemExit(f'{len(unfinished)} chains did not finish: '
                         f'{unfinished} (see their logs; rerun the same '
                         'command to resume them)')


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    # Numbers on a numeric axis; other values (teacher='previous',
    # tolerant='none'...) at evenly spaced named positions, in grid order.
    values = list(dict.fromkeys(str(a['setting'][x_key]) for a in aggregated))
    numeric = all(_is_number(v) for v in values)
    for i, (label, aggs) in enumerate(series.items()):
        xs = [float(a['setting'][x_key]) if numeric else values.index(
            str(a['setting'][x_key])) for a in aggs]
        ys = [a['final_top1'] for a in aggs]
        es = [a['final_top1_std'] for a in aggs]
        ax.errorbar(xs, ys, yerr=es, fmt='o-', color=f'C{i}', capsize=3,
                    label=label)
    if not numeric:
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(values)
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
