"""Writes that a kill cannot leave half done."""
import os
import os.path as osp
from typing import Optional, Union


def atomic_write(filepath, data: Union[bytes, str], mode: str = 'wb',
                 encoding: Optional[str] = None) -> None:
    """Write ``data`` to a temporary sibling, flush it to disk, then rename
    it over ``filepath`` (atomic on POSIX): the target is either the old
    file or the complete new one, never a truncated one."""
    filepath = os.fspath(filepath)
    os.makedirs(osp.dirname(osp.abspath(filepath)), exist_ok=True)
    tmp = f'{filepath}.tmp-{os.getpid()}'
    try:
        with open(tmp, mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
