"""What a chain tells its user while it runs: its place and ETA in each
ordinary training log line and in the visualizer backends, the chain's
metrics per generation, the environment once."""
import glob
import json
import os.path as osp
from types import SimpleNamespace

import pytest

from conftest import chain_cfg
from mmtolerant.engine.hooks import ChainProgressHook
from mmtolerant.engine.runner.chain_visualizer import (
    build_chain_visualizer, write_generation_scalars)
from mmtolerant.engine.runner.generation_config import generation_cfg
from mmtolerant.engine.runner.generation_settings import GenerationSettings


def _log_text(gen_dir):
    (path, ) = glob.glob(osp.join(gen_dir, '*', '*.log'))
    with open(path) as f:
        return f.read()


def _json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_each_training_log_line_carries_the_chain_eta_once(chain):
    work_dir, _ = chain
    for m in (0, 1, 2):
        lines = [line for line in _log_text(work_dir / f'gen_{m}').splitlines()
                 if 'Epoch(train)' in line]
        assert lines
        for line in lines:
            assert line.count(f'chain: M{m}/2 eta ') == 1, line
            # beside the generation's own eta, before the timings
            assert line.index('eta: ') < line.index('chain: ') < \
                line.index('time: ')
        # and in the scalars every visualizer backend receives
        (scalars, ) = glob.glob(
            str(work_dir / f'gen_{m}' / '*' / 'vis_data' / 'scalars.json'))
        train = [r for r in _json_lines(scalars) if 'loss' in r]
        assert train and all(r['chain/generation'] == m for r in train)
        assert all(r['chain/eta_s'] >= 0 for r in train)


def test_the_environment_and_config_are_logged_once_per_chain(chain):
    work_dir, _ = chain
    logs = [_log_text(work_dir / f'gen_{m}') for m in (0, 1, 2)]
    assert [log.count('System environment:') for log in logs] == [1, 0, 0]
    assert [log.count('Config:\n') for log in logs] == [1, 0, 0]
    for m in (1, 2):
        assert ('[chain] environment and config: as logged at the start of '
                f'the chain; this config is dumped to {work_dir}/gen_{m}'
                in logs[m])


def test_the_chain_metrics_go_to_the_chains_local_backend(chain):
    work_dir, records = chain
    rows = _json_lines(work_dir / 'vis_data' / 'scalars.json')
    assert [r['step'] for r in rows] == [0, 1, 2]
    for row, record in zip(rows, records):
        for key in ('top1', 'ensemble_top1', 'mean_top1_prob'):
            assert row[f'chain/{key}'] == pytest.approx(record[key])


def test_the_chain_metrics_go_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    records = [dict(generation=m, top1=90.0 + m, ensemble_top1=91.5,
                    mean_top1_prob=0.9 - m / 10, teacher_top1=None)
               for m in range(3)]
    # as the chain writes them: opened and closed for each generation
    for record in records:
        write_generation_scalars(
            dict(type='Visualizer', vis_backends=[
                dict(type='TensorboardVisBackend')]), str(tmp_path), record)
    events = EventAccumulator(str(tmp_path / 'vis_data'))
    events.Reload()
    assert 'chain/teacher_top1' not in events.Tags()['scalars']
    top1 = events.Scalars('chain/top1')
    assert [(e.step, e.value) for e in top1] == [
        (0, 90.0), (1, 91.0), (2, 92.0)]
    assert [e.value for e in events.Scalars('chain/mean_top1_prob')] == \
        pytest.approx([0.9, 0.8, 0.7])


def test_wandb_runs_of_a_chain_share_its_group(tmp_path):
    cfg = chain_cfg(tmp_path / 'my_chain')
    cfg.visualizer = dict(type='UniversalVisualizer', vis_backends=[
        dict(type='WandbVisBackend', init_kwargs=dict(project='p'))])
    settings = GenerationSettings.from_cfg(cfg.generations)
    for m in (0, 2):
        (backend, ) = generation_cfg(cfg, settings, m).visualizer.vis_backends
        assert backend.init_kwargs == dict(project='p', group='my_chain',
                                           name=f'gen_{m}')
    # the chain's own run: one, resumed for each generation's numbers
    (backend, ) = build_chain_visualizer(
        cfg.visualizer, str(tmp_path / 'my_chain'))._vis_backends.values()
    kwargs = backend._init_kwargs
    assert kwargs['group'] == 'my_chain' and kwargs['name'] == 'chain'
    assert kwargs['resume'] == 'allow' and kwargs['id'].startswith('chain-')


def test_a_config_with_its_own_log_processor_keeps_it(tmp_path):
    cfg = chain_cfg(tmp_path, log_processor=dict(type='MyProcessor'))
    settings = GenerationSettings.from_cfg(cfg.generations)
    assert generation_cfg(cfg, settings, 1).log_processor.type == \
        'MyProcessor'
    cfg = chain_cfg(tmp_path, log_processor=dict(window_size=7))
    assert generation_cfg(cfg, settings, 1).log_processor == dict(
        window_size=7, type='ChainLogProcessor')


@pytest.mark.parametrize('student_epoch_s, expected', [
    # 90 iterations left at 2 s + this generation's finish (5 s), then
    # 2 + 1 epochs of 10 iterations at 20 s, each with its build (4 s) and
    # finish (5 s)
    (None, 90 * 2 + 5 + (3 * 20 + 2 * 9)),
    # a finished student's 30 s per epoch prices the later students
    (30.0, 90 * 2 + 5 + (3 * 30 + 2 * 9)),
])
def test_the_chain_eta_adds_the_later_generations_and_their_overheads(
        monkeypatch, student_epoch_s, expected):
    hook = ChainProgressHook(generation=1, num_generations=3,
                             later_epochs=[2, 1])
    hook._past = dict(build_time_s=4.0, finish_time_s=5.0,
                      student_epoch_s=student_epoch_s)
    runner = SimpleNamespace(iter=0, max_iters=100,
                             train_dataloader=[None] * 10)
    hook._start, hook._start_iter = 100.0, 0
    monkeypatch.setattr('time.time', lambda: 120.0)
    runner.iter = 9  # 10 iterations done in 20 s
    assert hook.chain_eta(runner) == pytest.approx(expected)
