"""One run at a time in a chain's work_dir.

A run takes an exclusive lock on ``work_dir/chain.lock`` before it looks at
the work_dir and holds it until it ends. The lock is the kernel's
(``fcntl.flock``): it is released on any exit, a crash or SIGKILL included,
so a lock left by a dead process never blocks. The file also names the
holder (host, pid, start time, command) for the refusal of a second run.
Under DDP rank 0 takes it for the job.
"""
import datetime
import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional


class WorkDirInUse(RuntimeError):
    """Another run holds the work_dir."""


class WorkDirLock:
    """``with WorkDirLock(path): ...`` or :meth:`acquire` / :meth:`release`.

    Args:
        path (str): The lock file (``ChainLayout.path(LOCK_FILE)``).
    """

    def __init__(self, path: str):
        self.path = path
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`WorkDirInUse` naming its holder.
        """
        work_dir = os.path.dirname(self.path)
        try:
            os.makedirs(work_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError as e:
            raise PermissionError(
                f'{work_dir} is not writable ({e.strerror}): a run writes '
                'its lock, chain.json, checkpoints and reports there. Make '
                'it writable or use another --work-dir.') from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _wait_for_holder(fd)
            os.close(fd)
            raise WorkDirInUse(
                f'{os.path.dirname(self.path)} is in use by another run '
                f'({holder}). Two runs in one work_dir would mix their '
                'generations: wait for that run to end (or stop it), or '
                'use another --work-dir.') from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(dict(
            host=socket.gethostname(), pid=os.getpid(),
            started=datetime.datetime.now().isoformat(timespec='seconds'),
            command=' '.join(sys.argv))).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> 'WorkDirLock':
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _wait_for_holder(fd: int, timeout: float = 2.0) -> str:
    """The holder's name; a holder that has just taken the lock writes it
    a moment later, so wait up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    holder = _read_holder(fd)
    while holder is None and time.monotonic() < deadline:
        time.sleep(0.02)
        holder = _read_holder(fd)
    return holder or 'its holder has not written its name yet'


def _read_holder(fd: int) -> Optional[str]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return None
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started "
            f"{holder.get('started')}: {holder.get('command')}")
