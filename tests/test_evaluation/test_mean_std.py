"""Mean ± std over runs against hand computations."""
import math

import pytest

from mmtolerant.evaluation.mean_std import format_mean_std, mean_std


def test_mean_and_sample_std_equal_a_hand_computation():
    mean, std = mean_std([90.0, 94.0, 95.0])
    assert mean == pytest.approx(93.0)
    # ddof=1: ((-3)^2 + 1^2 + 2^2) / (3 - 1) = 7
    assert std == pytest.approx(math.sqrt(7.0))


def test_runs_that_did_not_report_the_statistic_are_left_out():
    assert mean_std([None, 90.0, None, 94.0]) == (92.0, pytest.approx(8**0.5))
    assert mean_std([None, None]) == (None, None)
    assert mean_std([]) == (None, None)


def test_a_single_run_has_std_zero():
    assert mean_std([91.5]) == (91.5, 0.0)
    assert mean_std([None, 91.5]) == (91.5, 0.0)


def test_a_value_that_is_not_finite_makes_the_std_nan():
    mean, std = mean_std([1.0, float('nan')])
    assert math.isnan(mean) and math.isnan(std)
    mean, std = mean_std([1.0, float('inf')])
    assert mean == float('inf') and math.isnan(std)


def test_the_cell_shows_the_digits_asked_for_and_a_dash_without_values():
    assert format_mean_std(92.0, 8**0.5) == '92.00 ± 2.83'
    assert format_mean_std(0.91234, 0.01, 3) == '0.912 ± 0.010'
    assert format_mean_std(*mean_std([None])) == '—'
