"""Progress of long analysis work, as log lines.

One line now and then through MMEngine's ``print_log`` (the run's logger
inside a run, so also its log file; a timestamped stdout logger in the
tools), not a bar: mmengine's ``ProgressBar`` redraws its line with
carriage returns, which garbles MMEngine's log lines printed meanwhile and
piles half-lines into a log file, a ``nohup``/SLURM output or a test's
captured output; rich's live display draws nothing until the end where
the output is not a terminal. Lines read the same everywhere.
A line reads::

    M1 test: 6/11 batches (55%), 2.1 batches/s, elapsed 0:00:03, ETA 0:00:02

Only the main process reports (under DDP each rank works on its share, at
much the same pace), and reporting never touches what is iterated.
"""
import datetime
from time import monotonic
from typing import Iterable, Iterator, Optional, TypeVar

from mmengine.dist import get_world_size, is_main_process
from mmengine.logging import print_log

__all__ = ['Progress', 'track', 'format_duration']

T = TypeVar('T')

# A pass that ends within this many seconds prints at most its last line.
INTERVAL_S = 10.0


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, as MMEngine's own ETA."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
    """Counts finished steps of a known number and reports them.

    A line is printed when at least ``every`` of the total has been done
    since the last line and at least ``interval_s`` seconds have passed, and
    on the last step: always with ``final=True``, else only when an earlier
    line was printed (so a quick inner pass stays silent and a slow one is
    closed). ``every=0, interval_s=0``: a line per step.

    Args:
        total (int, optional): Steps in all; None when unknown (no
            percentage, no ETA, no last line).
        desc (str): What is done, first in the line.
        unit (str): What a step is, plural.
        every (float): Fraction of ``total`` between lines. Defaults to 0.1.
        interval_s (float): Least seconds between lines. Defaults to
            :data:`INTERVAL_S`.
        final (bool): Always report the last step. Defaults to True.
        logger: ``print_log``'s logger. Defaults to ``'current'``.
    """

    def __init__(self,
                 total: Optional[int],
                 desc: str,
                 unit: str = 'batches',
                 every: float = 0.1,
                 interval_s: float = INTERVAL_S,
                 final: bool = True,
                 logger='current'):
        self.total = total
        self.desc = desc
        if get_world_size() > 1:
            self.desc += f' (rank 0 of {get_world_size()})'
        self.unit = unit
        self.every = every
        self.interval_s = interval_s
        self.final = final
        self.logger = logger
        self.enabled = is_main_process()
        self.done = 0
        self.started = monotonic()
        self._last = (0, self.started)  # steps and time of the last line
        self._reported = False

    def update(self, n: int = 1, note: str = '') -> None:
        """``n`` more steps done; ``note`` ends the line when one is
        printed."""
        self.done += n
        if not self.enabled:
            return
        now = monotonic()
        last = self.total is not None and self.done >= self.total
        if last:
            due = self.final or self._reported
        else:
            due = (now - self._last[1] >= self.interval_s
                   and (self.total is None or
                        self.done - self._last[0] >= self.every * self.total))
        if due:
            self._last = (self.done, now)
            self._reported = True
            print_log(self.line(now, note), logger=self.logger)

    def _rate(self, per_s: float) -> str:
        """Steps per second, or per minute or hour for slow steps (models,
        chains). A throughput: with steps run in parallel, not the time of
        one."""
        for per, seconds in (('s', 1), ('min', 60), ('h', 3600)):
            if per_s * seconds >= 1:
                break
        return f'{per_s * seconds:.1f} {self.unit}/{per}'

    def line(self, now: Optional[float] = None, note: str = '') -> str:
        """What is done, the rate, the time elapsed and the ETA."""
        now = monotonic() if now is None else now
        elapsed = now - self.started
        parts = [f'{self.done} {self.unit}' if self.total is None else
                 f'{self.done}/{self.total} {self.unit} '
                 f'({100 * self.done / max(self.total, 1):.0f}%)']
        if self.done and elapsed > 0:
            parts.append(self._rate(self.done / elapsed))
        parts.append(f'elapsed {format_duration(elapsed)}')
        if self.total is not None and 0 < self.done < self.total:
            parts.append('ETA ' + format_duration(
                elapsed / self.done * (self.total - self.done)))
        line = f'{self.desc}: {", ".join(parts)}'
        return f'{line}; {note}' if note else line


def track(iterable: Iterable[T],
          desc: str,
          total: Optional[int] = None,
          **kwargs) -> Iterator[T]:
    """Yields ``iterable``'s items unchanged, reporting as a
    :class:`Progress` (``kwargs``) of ``total`` steps (by default
    ``len(iterable)`` where it has one). A step counts as done when the
    next item is asked for, so the time of the work done on it is in."""
    if total is None and hasattr(iterable, '__len__'):
        total = len(iterable)
    progress = Progress(total, desc, **kwargs)
    for item in iterable:
        yield item
        progress.update()
