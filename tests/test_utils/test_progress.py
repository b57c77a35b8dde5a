"""Progress lines of long analysis work (mmtolerant.utils.progress)."""
import logging

import pytest

from mmtolerant.utils import progress as progress_module
from mmtolerant.utils.progress import Progress, track


@pytest.fixture
def clock(monkeypatch):
    """A fake monotonic clock: ``clock.now`` seconds."""

    class Clock:
        now = 1000.0

    monkeypatch.setattr(progress_module, 'monotonic', lambda: Clock.now)
    return Clock


@pytest.fixture
def lines(caplog):
    """The messages logged so far to the logger ``test_progress``."""
    caplog.set_level(logging.INFO, logger='test_progress')
    return lambda: [r.getMessage() for r in caplog.records
                    if r.name == 'test_progress']


LOGGER = logging.getLogger('test_progress')


def test_a_line_about_every_tenth_with_rate_elapsed_and_eta(clock, lines):
    seen = []
    for item in track(range(100), 'M1 test set', interval_s=0,
                      logger=LOGGER):
        clock.now += 2.0  # two seconds a batch
        seen.append(item)
    assert seen == list(range(100))
    got = lines()
    assert len(got) == 10
    # 30 batches in 60 s; 70 left at that pace: 140 s.
    assert got[2] == ('M1 test set: 30/100 batches (30%), 30.0 batches/min, '
                      'elapsed 0:01:00, ETA 0:02:20')
    assert got[-1] == ('M1 test set: 100/100 batches (100%), '
                       '30.0 batches/min, elapsed 0:03:20')


def test_lines_are_at_least_interval_s_apart_and_a_quick_pass_prints_its_last(
        clock, lines):
    for _ in track(range(100), 'pass', unit='items', interval_s=50,
                   logger=LOGGER):
        clock.now += 1.0
    # At 50 s and 100 s (the last); the 10% steps between are too close.
    assert [line.split(',')[0] for line in lines()] == [
        'pass: 50/100 items (50%)', 'pass: 100/100 items (100%)']
    for _ in track(range(5), 'quick', logger=LOGGER):
        clock.now += 0.1
    assert lines()[-1] == ('quick: 5/5 batches (100%), 10.0 batches/s, '
                           'elapsed 0:00:00')


def test_a_quick_inner_pass_is_silent_and_a_slow_one_is_closed(clock, lines):
    for _ in track(range(5), 'inner', final=False, logger=LOGGER):
        clock.now += 1.0
    assert lines() == []
    for _ in track(range(5), 'inner', final=False, interval_s=2,
                   logger=LOGGER):
        clock.now += 1.0
    assert [line.split(',')[0] for line in lines()] == [
        'inner: 2/5 batches (40%)', 'inner: 4/5 batches (80%)',
        'inner: 5/5 batches (100%)']


def test_a_line_per_step_with_a_note_for_slow_steps(clock, lines):
    progress = Progress(3, '[sweep] progress', unit='chains', every=0,
                        interval_s=0, logger=LOGGER)
    for name in ('a', 'b', 'c'):
        clock.now += 90.0
        progress.update(note=f'{name} done')
    assert lines() == [
        '[sweep] progress: 1/3 chains (33%), 40.0 chains/h, elapsed 0:01:30, '
        'ETA 0:03:00; a done',
        '[sweep] progress: 2/3 chains (67%), 40.0 chains/h, elapsed 0:03:00, '
        'ETA 0:01:30; b done',
        '[sweep] progress: 3/3 chains (100%), 40.0 chains/h, elapsed '
        '0:04:30; c done'
    ]


def test_only_the_main_process_reports(monkeypatch, clock, lines):
    monkeypatch.setattr(progress_module, 'is_main_process', lambda: False)
    items = list(track(range(10), 'rank 1', interval_s=0, logger=LOGGER))
    assert items == list(range(10)) and lines() == []


def test_a_distributed_line_says_it_counts_rank_0s_share(
        monkeypatch, clock, lines):
    monkeypatch.setattr(progress_module, 'get_world_size', lambda: 4)
    for _ in track(range(2), 'M0 test set', logger=LOGGER):
        clock.now += 1.0
    assert lines() == ['M0 test set (rank 0 of 4): 2/2 batches (100%), '
                       '1.0 batches/s, elapsed 0:00:02']
