"""Writes that a kill cannot leave half done, all in one place.

Every file the plugin writes goes to a temporary sibling first, is flushed
to disk and is then renamed over its target (atomic on POSIX): the target
is either the old file or the complete new one, never a truncated one.
``AtomicLocalBackend`` brings the same to MMEngine's checkpoints: a
``CheckpointHook`` given ``backend_args=dict(backend='atomic_local')``
writes its ``.pth`` files this way (the chain sets it for every
generation, our ``tools/train.py`` for every run).
"""
import contextlib
import io
import os
import os.path as osp
from typing import Any, Iterator, Optional, Union

from mmengine.fileio.backends import LocalBackend, register_backend

ATOMIC_BACKEND = 'atomic_local'
TMP_MARK = '.tmp-'  # temporary files are named <target>.tmp-<pid>...


def tmp_path(filepath: str, suffix: str = '') -> str:
    """The temporary sibling of ``filepath`` this process writes to."""
    return f'{filepath}{TMP_MARK}{os.getpid()}{suffix}'


@contextlib.contextmanager
def atomic_file(filepath, suffix: str = '') -> Iterator[str]:
    """Yield a temporary path to write ``filepath``'s new content to
    (``suffix`` for writers that insist on an extension); it replaces
    ``filepath`` when the block ends without an error, and is removed
    otherwise."""
    filepath = os.fspath(filepath)
    os.makedirs(osp.dirname(osp.abspath(filepath)), exist_ok=True)
    tmp = tmp_path(filepath, suffix)
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def atomic_write(filepath, data: Union[bytes, str], mode: str = 'wb',
                 encoding: Optional[str] = None) -> None:
    """Write ``data`` (bytes with ``mode='wb'``, text with ``'w'``)."""
    with atomic_file(filepath) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(text: str, filepath) -> None:
    atomic_write(filepath, text, 'w', encoding='utf-8')


def atomic_torch_save(obj: Any, filepath) -> None:
    """``torch.save`` that a kill never leaves half written."""
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(filepath, buffer.getvalue(), 'wb')


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend, with ``put``/``put_text`` written
    through a temporary file and a rename."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(filepath, obj, 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj, 'w', encoding=encoding)


def register_atomic_backend() -> None:
    """Make ``backend_args=dict(backend='atomic_local')`` mean
    :class:`AtomicLocalBackend` (a new name: no backend of MMEngine's
    changes)."""
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def use_atomic_checkpoints(cfg) -> None:
    """Let the config's ``CheckpointHook`` write through
    :class:`AtomicLocalBackend`, unless it writes elsewhere than to a
    local folder (its own ``backend_args``, or an ``out_dir`` with a URI
    prefix)."""
    hooks = cfg.get('default_hooks') or {}
    checkpoint = hooks.get('checkpoint')
    if not isinstance(checkpoint, dict):
        return
    out_dir = checkpoint.get('out_dir')
    if checkpoint.get('backend_args') or checkpoint.get('file_client_args') \
            or (isinstance(out_dir, str) and '://' in out_dir):
        return
    checkpoint['backend_args'] = dict(backend=ATOMIC_BACKEND)
