"""The analysis tools on a real chain's work_dir: plots, secondary
information, linear probe, sweeps."""
import json
import os.path as osp
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import (CHAIN, REPO, run_tool)


def progress_lines(proc, tool):
    """The progress lines a tool logged (the messages, without the
    logger's time and level)."""
    return [line.split(' - INFO - ', 1)[1] for line in proc.stdout.splitlines()
            if f' - INFO - [{tool}] ' in line]


@pytest.mark.slow
def test_plot_chains_tool_compares_chains_side_by_side(chain, tmp_path,
                                                       python):
    work_dir, records = chain
    run_tool([
        python, 'tools/analysis/plot_chains.py',
        str(work_dir),
        str(work_dir), '--labels', 'strict', 'TSD', '--out',
        str(tmp_path / 'chains.png'), '--table',
        str(tmp_path / 'chains.md')
    ])
    assert (tmp_path / 'chains.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = (tmp_path / 'chains.md').read_text().splitlines()
    assert 'strict top-1' in table[0] and 'TSD ensemble' in table[0]
    last = table[-1].split('|')
    assert last[1].strip() == 'M2'
    assert float(last[2]) == pytest.approx(records[2]['top1'], abs=0.005)


@pytest.mark.slow
def test_secondary_info_tool_reads_a_chains_saved_predictions(
        chain, tmp_path, python):
    from mmtolerant.evaluation.secondary_info import secondary_info
    work_dir, records = chain
    run_tool([
        python, 'tools/analysis/secondary_info.py',
        str(work_dir), '--labels', 'tsd', '--groups', 'fashion_mnist',
        '--k', '3', '--out-dir',
        str(tmp_path / 'si')
    ])
    with open(tmp_path / 'si' / 'secondary_info.json') as f:
        rows = json.load(f)['rows']
    assert [r['name'] for r in rows] == ['tsd M0', 'tsd M1', 'tsd M2']
    for m, row in enumerate(rows):
        with np.load(work_dir / f'gen_{m}' / 'test_predictions.npz') as d:
            expected = secondary_info(d['scores'], 3, [0, 1, 0, 0, 0, 2, 0,
                                                       2, 3, 2])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value)
        assert row['mean_top1_prob'] == pytest.approx(
            records[m]['mean_top1_prob'], abs=1e-6)
    assert (tmp_path / 'si' / 'secondary_info.png').is_file()


@pytest.mark.slow
def test_secondary_info_tool_predicts_with_checkpoints_showing_progress(
        chain, tmp_path, python):
    """--checkpoints runs each model on the config's test set: the numbers
    of the chain's own records; a progress line per checkpoint, none per
    batch (the predictions are quick)."""
    work_dir, records = chain
    proc = run_tool([
        python, 'tools/analysis/secondary_info.py', '--config', CHAIN,
        '--checkpoints', *[str(work_dir / f'gen_{m}' / 'exported_model.pth')
                           for m in (1, 2)],
        '--out-dir', str(tmp_path / 'si')
    ])
    with open(tmp_path / 'si' / 'secondary_info.json') as f:
        rows = json.load(f)['rows']
    assert [r['index'] for r in rows] == [0, 1]
    for row, m in zip(rows, (1, 2)):
        assert row['top1'] == pytest.approx(records[m]['top1'], abs=1e-6)
        assert row['mean_top1_prob'] == pytest.approx(
            records[m]['mean_top1_prob'], abs=1e-6)
    lines = progress_lines(proc, 'secondary_info')
    assert [line.split(',')[0] for line in lines] == [
        '[secondary_info] progress: 1/2 checkpoints (50%)',
        '[secondary_info] progress: 2/2 checkpoints (100%)']
    assert 'ETA' in lines[0] and 'ETA' not in lines[1]
    assert lines[1].endswith('; exported_model.pth predicted')


@pytest.mark.slow
def test_secondary_info_tool_averages_chains_that_share_a_label(
        chain, tmp_path, python):
    """Seeds of one setting: rows are the mean over the chains."""
    from mmtolerant.evaluation.secondary_info import secondary_info
    work_dir, _ = chain
    other = tmp_path / 'other_seed'
    shutil.copytree(work_dir, other)
    groups = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]
    expected = []
    for m in range(3):
        with np.load(work_dir / f'gen_{m}' / 'test_predictions.npz') as d:
            scores, labels = d['scores'], d['labels']
        shifted = np.roll(scores, 1, axis=1) ** 2
        shifted /= shifted.sum(1, keepdims=True)
        np.savez(other / f'gen_{m}' / 'test_predictions.npz',
                 scores=shifted, labels=labels)
        a, b = (secondary_info(x, 3, groups) for x in (scores, shifted))
        expected.append({k: (a[k] + b[k]) / 2 for k in a})
    run_tool([
        python, 'tools/analysis/secondary_info.py', str(work_dir),
        str(other), '--labels', 'tsd', 'tsd', '--groups', 'fashion_mnist',
        '--out-dir', str(tmp_path / 'si')
    ])
    with open(tmp_path / 'si' / 'secondary_info.json') as f:
        rows = json.load(f)['rows']
    assert [r['name'] for r in rows] == [
        f'tsd M{m} (mean of 2)' for m in range(3)]
    for row, want in zip(rows, expected):
        assert row['chains'] == 2 and row['group_lift_std'] >= 0
        for key, value in want.items():
            assert row[key] == pytest.approx(value)


@pytest.mark.slow
def test_linear_probe_tool_equals_a_probe_fitted_by_hand(chain, tmp_path,
                                                         python):
    from mmengine.dataset import pseudo_collate
    from mmpretrain.apis import init_model
    from mmpretrain.registry import DATASETS
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    work_dir, _ = chain
    probe = tmp_path / 'probe.py'
    probe.write_text(
        "pipeline = [dict(type='PackInputs')]\n"
        "probe_train = dict(type='SklearnDigits', split='train', "
        "test_fraction=0.5, seed=3, pipeline=pipeline)\n"
        "probe_test = dict(type='SklearnDigits', split='test', "
        "test_fraction=0.5, seed=3, pipeline=pipeline)\n")
    proc = run_tool([
        python, 'tools/analysis/linear_probe.py',
        str(work_dir), '--labels', 'tsd', '--probe',
        str(probe), '--out',
        str(tmp_path / 'probe.json')
    ])
    with open(tmp_path / 'probe.json') as f:
        rows = json.load(f)['rows']
    assert [r['model'] for r in rows] == ['tsd M0', 'tsd M1', 'tsd M2']
    # A line per model (feature extraction and fit), none per batch (quick);
    # the table after them, whole.
    lines = progress_lines(proc, 'linear_probe')
    assert [line.split(',')[0] for line in lines] == [
        f'[linear_probe] progress: {i}/3 models ({p}%)'
        for i, p in ((1, 33), (2, 67), (3, 100))]
    for line, row in zip(lines, rows):
        assert re.search(rf"; {row['model']}: top-1 {row['probe_top1']:.2f} "
                         r'\(features [\d.]+ s, fit [\d.]+ s\)$', line)
    table = proc.stdout[proc.stdout.index('| model | linear-probe top-1 |'):]
    assert table.splitlines()[2:] == [
        f"| {r['model']} | {r['probe_top1']:.2f} |" for r in rows]

    gen = work_dir / 'gen_2'
    model = init_model(str(gen / 'exported_model.py'),
                       str(gen / 'exported_model.pth'))
    split = {}
    for name in ('train', 'test'):
        ds = DATASETS.build(dict(type='SklearnDigits', split=name,
                                 test_fraction=0.5, seed=3,
                                 pipeline=[dict(type='PackInputs')]))
        data = model.data_preprocessor(
            pseudo_collate([ds[i] for i in range(len(ds))]), False)
        with torch.no_grad():
            x = model.neck(model.backbone(data['inputs']))[-1].numpy()
        y = np.array([int(d.gt_label) for d in data['data_samples']])
        split[name] = (x, y)
    scaler = StandardScaler().fit(split['train'][0])
    clf = LogisticRegression(max_iter=2000, random_state=0).fit(
        scaler.transform(split['train'][0]), split['train'][1])
    expected = 100 * clf.score(scaler.transform(split['test'][0]),
                               split['test'][1])
    assert rows[2]['probe_top1'] == pytest.approx(expected, abs=1e-6)
    assert rows[2]['feature_dim'] == 64


@pytest.mark.slow
def test_sweep_tool_runs_a_grid_collects_reports_and_skips_finished_runs(
        tmp_path, python):
    args = [
        python, 'tools/analysis/sweep.py', CHAIN, '--grid',
        'generations.teacher_loss.eta=0.5,1.0', '--seeds', '0',
        '--cfg-options', 'train_cfg.max_epochs=1',
        'generations.num_generations=1', '--work-dir',
        str(tmp_path / 'sweep'), '--baseline', 'eta1.0'
    ]
    first = run_tool(args)
    # A progress line as each chain ends (one at a time: --parallel 1).
    lines = progress_lines(first, 'sweep')
    assert [line.split(',')[0] for line in lines] == [
        '[sweep] progress: 1/2 chains (50%)',
        '[sweep] progress: 2/2 chains (100%)']
    assert re.search(r'ETA \d+:\d\d:\d\d; eta0.5_seed0 done in \d+ s; '
                     '1 running, 0 waiting$', lines[0])
    assert re.search(r'elapsed \d+:\d\d:\d\d; eta1.0_seed0 done in \d+ s; '
                     '0 running, 0 waiting$', lines[1])
    with open(tmp_path / 'sweep' / 'sweep.json') as f:
        sweep = json.load(f)
    assert [r['setting'] for r in sweep['runs']] == [
        {'generations.teacher_loss.eta': '0.5'},
        {'generations.teacher_loss.eta': '1.0'}
    ]
    for row in sweep['runs']:
        eta = row['setting']['generations.teacher_loss.eta']
        with open(tmp_path / 'sweep' / f'eta{eta}_seed0' /
                  'generations.json') as f:
            records = json.load(f)
        assert row['final_top1'] == records[-1]['top1']
        assert row['m0_mean_top1_prob'] == records[0]['mean_top1_prob']
        assert f'eta={eta}' in records[0]['trained_with']
    assert (tmp_path / 'sweep' / 'sweep.png').is_file()
    # Per generation, paired with the baseline run of the same seed.
    gens = sweep['generations']
    assert list(gens) == ['eta0.5', 'eta1.0']
    with open(tmp_path / 'sweep' / 'eta0.5_seed0' / 'generations.json') as f:
        tsd = json.load(f)
    with open(tmp_path / 'sweep' / 'eta1.0_seed0' / 'generations.json') as f:
        strict = json.load(f)
    for m in range(2):
        row = gens['eta0.5'][m]
        assert row['top1'] == [tsd[m]['top1'], 0.0]
        assert row['top1_minus_baseline'][0] == pytest.approx(
            tsd[m]['top1'] - strict[m]['top1'])
        assert 'top1_minus_baseline' not in gens['eta1.0'][m]
    assert (tmp_path / 'sweep' / 'sweep_generations.png').is_file()
    assert '(paired)' in (tmp_path / 'sweep' / 'generations.md').read_text()
    again = run_tool(args)
    assert again.stdout.count('finished earlier') == 2
    assert progress_lines(again, 'sweep') == []


@pytest.mark.slow
def test_sweep_tool_names_runs_of_several_configs_and_checks_the_baseline(
        tmp_path, python):
    strict = osp.join(REPO, 'configs', 'tsd',
                      'ban_small-convnet_1xb128_fashion-mnist-5k.py')
    tsd = osp.join(REPO, 'configs', 'tsd',
                   'tsd_small-convnet_1xb128_fashion-mnist-5k.py')
    args = [python, 'tools/analysis/sweep.py', strict, tsd, '--seeds', '0',
            '1', '--work-dir', str(tmp_path / 'study'), '--dry-run']
    listed = run_tool(
        args + ['--baseline', 'ban_small-convnet_1xb128_fashion-mnist-5k'])
    for name in ('ban_small-convnet_1xb128_fashion-mnist-5k_seed0',
                 'tsd_small-convnet_1xb128_fashion-mnist-5k_seed1'):
        assert name in listed.stdout
    wrong = run_tool(args + ['--baseline', 'strict'], expect=None)
    assert wrong.returncode != 0
    assert "--baseline 'strict' is not one of the settings" in wrong.stderr


def test_linear_probe_summary_is_mean_and_std_per_label_and_generation():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'linear_probe_tool', osp.join(REPO, 'tools', 'analysis',
                                      'linear_probe.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = [dict(model=f'{label} M{m}', probe_top1=value)
            for label, m, value in [('TSD-all', 0, 90.0), ('TSD-all', 0, 94.0),
                                    ('TSD-all', 1, 92.0), ('TSD-all', 1, 92.0),
                                    ('strict', 0, 91.0), ('strict', 0, 93.0)]]
    summary = {(r['label'], r['model']): r for r in tool.summarise(rows)}
    assert summary[('TSD-all', 'M0')]['mean'] == 92.0
    assert summary[('TSD-all', 'M0')]['std'] == pytest.approx(8**0.5)
    assert summary[('TSD-all', 'M1')]['std'] == 0.0
    assert summary[('strict', 'M0')]['runs'] == 2
    assert tool.summarise(rows[:1] + rows[2:3] + rows[4:5]) == []
