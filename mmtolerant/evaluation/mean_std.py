"""Mean ± standard deviation of a statistic over runs (seeds, chains).

For the n values x_i that were reported::

    mean = sum(x_i) / n
    std  = sqrt(sum((x_i - mean)^2) / (n - 1))    (sample std, ddof = 1)

computed exactly and rounded once (:func:`statistics.fmean`,
:func:`statistics.stdev`).
"""
import math
import statistics
from typing import Iterable, Optional, Tuple


def mean_std(
    values: Iterable[Optional[float]]
) -> Tuple[Optional[float], Optional[float]]:
    """``(mean, std)`` of ``values``.

    ``None`` entries (a statistic a run did not report) are left out; with
    no value left, ``(None, None)``. A single value has std 0.0. A value
    that is not finite makes the mean NaN or infinite and the std NaN.
    """
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, 0.0
    if not math.isfinite(mean):
        # statistics.stdev fails on NaN and infinity instead of returning NaN.
        return mean, math.nan
    return mean, statistics.stdev(values)


def format_mean_std(mean: Optional[float],
                    std: Optional[float],
                    digits: int = 2) -> str:
    """``'mean ± std'`` with ``digits`` decimals; ``'—'`` without a mean."""
    return '—' if mean is None else f'{mean:.{digits}f} ± {std:.{digits}f}'
