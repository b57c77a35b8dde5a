"""Tensors that the local ranks of a node share: one copy per node.

Under DDP every rank is a process of its own, so a large array that every
rank needs (the teacher cache: 2.5 GB of float16 logits for ImageNet) would
otherwise be held once per rank, eight times on an eight-GPU node. Here the
node's first rank creates a file in node-local memory (``/dev/shm``, or
``tempfile.gettempdir()`` when ``/dev/shm`` lacks room), every local rank
maps it with ``torch.from_file(shared=True)``, and the file is removed as
soon as all have mapped it: the mappings stay valid, the memory is freed
with the last of them, and a crash leaves nothing behind.

Never in the work_dir: on a filesystem that several nodes mount, one file
mapped by all would not be coherent, and each node makes its own file
anyway. Ranks belong to the same node when they share a host name and a
boot id; a rank that cannot see its leader's file (a container with its own
``/dev/shm``) makes the node fall back.

This module owns the mechanism only; what lives in the memory, and whether
a node that cannot share should stop or fall back, are its caller's
(``TeacherOutputCache``'s ``shared`` setting).
"""
import logging
import math
import os
import socket
import tempfile
import uuid
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmengine.dist import all_gather_object, get_rank
from mmengine.logging import print_log

_ALIGN = 64  # bytes; every array of a shared segment starts aligned


class NodeSharedMemoryError(RuntimeError):
    """Some node of the run could not share its memory; ``reasons`` says
    why, for every rank that failed (the same on all ranks)."""

    def __init__(self, reasons: str):
        super().__init__(f'no shared memory on every node ({reasons})')
        self.reasons = reasons


def node_shared_tensors(
        owner: str, shapes: Dict[str, Tuple[tuple, torch.dtype]],
        fill: Callable[[Dict[str, torch.Tensor]], None], required: bool
) -> Tuple[Optional[Dict[str, torch.Tensor]], int]:
    """Zeroed tensors of the given ``{name: (shape, dtype)}`` that all
    ranks of this node map, and how many ranks that is; ``(None, 1)`` where
    this node cannot share them (or has a single rank), and then the caller
    keeps a private copy in each rank.

    Collective: every rank calls it, with the same arguments. ``fill`` runs
    on the node's first rank only, before any other maps the tensors (to
    copy in what a smaller allocation held). A failure on some node is
    logged there, prefixed with ``owner`` (a name such as ``'teacher
    cache'``, which also names the file); with ``required`` every rank
    raises :class:`NodeSharedMemoryError` instead.
    """
    nbytes = sum(_aligned(_bytes(shape, dtype))
                 for shape, dtype in shapes.values())
    base, shared_by = _shared_segment(
        owner, nbytes, lambda b: fill(_views(b, shapes)), required)
    if base is None:
        return None, 1
    return _views(base, shapes), shared_by


def _bytes(shape: tuple, dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _views(base: torch.Tensor, shapes: Dict[str, Tuple[tuple, torch.dtype]]
           ) -> Dict[str, torch.Tensor]:
    """The tensors as views of one uint8 segment, each 64-byte aligned."""
    tensors, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        n = _bytes(shape, dtype)
        tensors[name] = base[offset:offset + n].view(dtype).view(shape)
        offset += _aligned(n)
    return tensors


def _node_key() -> str:
    """Who shares this process's ``/dev/shm``: the machine and its boot (a
    host name alone may repeat across containers; the segment's visibility
    is checked anyway)."""
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            boot = f.read().strip()
    except OSError:
        boot = ''
    return f'{socket.gethostname()}/{boot}'


def _segment_dirs() -> List[str]:
    """Node-local memory first. Never the work_dir: on a filesystem that
    several nodes mount, one file mapped by all would not be coherent (each
    node makes its own file anyway)."""
    dirs = ['/dev/shm'] if os.path.isdir('/dev/shm') else []
    return dirs + [tempfile.gettempdir()]


def _create_segment(owner: str, name: str,
                    nbytes: int) -> Tuple[Optional[str], str]:
    """A file of ``nbytes`` whose blocks are allocated now (so that a full
    ``/dev/shm`` fails here, not as a SIGBUS in the middle of training),
    in the first folder of :func:`_segment_dirs` with room; (path, '') or
    (None, why not)."""
    reasons = []
    for folder in _segment_dirs():
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            reasons.append(f'{folder}: {e}')
            continue
        try:
            os.posix_fallocate(fd, 0, nbytes)
            if reasons:  # a file on disk: shared, but written back to it
                print_log(
                    f'[mmtolerant] {owner}: {"; ".join(reasons)}; '
                    f'its shared file is in {folder} instead',
                    logger='current', level=logging.WARNING)
            return path, ''
        except OSError as e:
            os.unlink(path)
            reasons.append(f'{folder}: {e}')
        finally:
            os.close(fd)
    return None, '; '.join(reasons)


def _shared_segment(owner: str, nbytes: int, fill, required: bool
                    ) -> Tuple[Optional[torch.Tensor], int]:
    """A zeroed uint8 tensor of ``nbytes`` that all ranks of this node map,
    and their number; (None, 1) where a node cannot share one (logged, or
    raised when ``required``). Collective: every rank calls it.

    The node's first rank creates the file under a name made of ``owner``,
    rank 0's random token and its own rank, and ``fill``s it (with what a
    smaller segment held, when the caller grows); the ranks meet; the others
    map it; the ranks meet; the first rank removes the file (the mappings
    stay valid and the memory is freed with the last one). A failure in between
    is caught and reported at the next meeting, so that every rank runs the
    same collectives and none waits for a rank that left.
    """
    rank = get_rank()
    everyone = all_gather_object((_node_key(), uuid.uuid4().hex))
    node = [r for r, (key, _) in enumerate(everyone)
            if key == everyone[rank][0]]
    leader = node[0]
    base, path, error = None, None, ''
    if rank == leader and len(node) > 1:
        prefix = 'mmtolerant-' + owner.replace(' ', '-')
        name = f'{prefix}-{everyone[0][1]}-{leader}'
        path, error = _create_segment(owner, name, nbytes)
        try:
            if path is not None:
                base = torch.from_file(path, shared=True, size=nbytes,
                                       dtype=torch.uint8)
                fill(base)
        except Exception as e:  # any: told to all at the next meeting
            os.unlink(path)
            base, path, error = None, None, f'rank {rank}: {e}'
    path = all_gather_object((path, error))[leader][0]
    if rank != leader and path is not None:
        try:
            # Same host name and boot, yet another /dev/shm (a container
            # of its own): the file is not there.
            if not os.path.exists(path):
                raise OSError(f'{path} is not visible here')
            base = torch.from_file(path, shared=True, size=nbytes,
                                   dtype=torch.uint8)
        except Exception as e:  # any: told to all at the next meeting
            error = f'rank {rank}: {e}'
    errors = all_gather_object(error)
    if rank == leader and path is not None:
        os.unlink(path)
    ours = [errors[r] for r in node if errors[r]]
    if len(node) > 1 and not ours:
        return base, len(node)
    failed = [e for e in errors if e]
    if required and failed:
        raise NodeSharedMemoryError('; '.join(failed))
    if ours:
        print_log(
            f'[mmtolerant] {owner}: no shared memory on this node '
            f'({"; ".join(ours)}): every rank holds its own copy',
            logger='current')
    return None, 1
