"""A stop asked for by a signal, as clusters send before a time limit.

SLURM sends a job's tasks a signal some time before it stops them
(``#SBATCH --signal=USR1@180``). :func:`listen` catches it: the handler
only notes which signal came, and the training stops at its next safe
point (:class:`~mmtolerant.engine.hooks.PreemptionHook`: the next
iteration boundary; the ``GenerationRunner``: between generations), saves
what it needs and exits with :data:`REQUEUE_EXIT_CODE`, so that the job
script can tell "requeue me" from a failure. Under DDP the ranks
:func:`agree` on the stop, so every rank stops at the same iteration.
"""
import signal
from typing import Dict, Optional, Sequence

import torch
from mmengine.dist import all_reduce, is_distributed

# EX_TEMPFAIL of sysexits.h: "a temporary failure; retry later".
REQUEUE_EXIT_CODE = 75
DEFAULT_SIGNALS = ('SIGUSR1', )

_received: Optional[str] = None
_previous: Dict[int, object] = {}
_listeners = 0


class Requeue(SystemExit):
    """Raised where a signalled run stopped at a safe point; exits the
    process with :data:`REQUEUE_EXIT_CODE`."""

    def __init__(self, message: str):
        super().__init__(REQUEUE_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def signal_numbers(names: Sequence[str], owner: str) -> Dict[str, int]:
    """``{name: number}`` of signal names such as ``'SIGUSR1'``; an unknown
    name is refused with a message that starts with ``owner``."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) \
            or not names:
        raise ValueError(f'{owner}: signals must be a non-empty list of '
                         f"signal names such as ['SIGUSR1'], got {names!r}")
    numbers = {}
    for name in names:
        number = getattr(signal, str(name), None)
        if not isinstance(number, signal.Signals) or name in ('SIGKILL',
                                                              'SIGSTOP'):
            raise ValueError(f'{owner}: {name!r} is not a signal that can '
                             "be caught (e.g. 'SIGUSR1', 'SIGTERM')")
        numbers[name] = int(number)
    return numbers


def _note(signum, frame) -> None:
    global _received
    # Nothing else here: a handler runs between two bytecodes of whatever
    # the process was doing.
    _received = signal.Signals(signum).name


def listen(names: Sequence[str] = DEFAULT_SIGNALS) -> None:
    """Catch ``names`` from now on (until the matching
    :func:`stop_listening`). Nested calls are counted."""
    global _listeners
    numbers = signal_numbers(names, 'preemption')
    _listeners += 1
    for number in numbers.values():
        if number not in _previous:
            _previous[number] = signal.signal(number, _note)


def stop_listening() -> None:
    """End one :func:`listen`; the last one restores the handlers found and
    forgets a signal that came."""
    global _listeners, _received
    _listeners = max(0, _listeners - 1)
    if _listeners:
        return
    for number, handler in _previous.items():
        signal.signal(number, handler)
    _previous.clear()
    _received = None


def received() -> Optional[str]:
    """The name of the signal that asked this process to stop, if any."""
    return _received


def agree() -> Optional[str]:
    """The name of the signal that asked some rank to stop (with several:
    the highest-numbered), else None. Every rank must call it at the same
    point (one all-reduce of one number when distributed)."""
    if not is_distributed():
        return _received
    number = 0 if _received is None else int(getattr(signal, _received))
    flag = torch.tensor([float(number)])
    all_reduce(flag, op='max')
    number = int(flag)
    return signal.Signals(number).name if number else None
