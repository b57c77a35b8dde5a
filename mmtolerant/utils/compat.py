"""Fixes for the two stack incompatibilities users would otherwise meet.

Applied once by ``import mmtolerant`` (which configs trigger through
``custom_imports``), so stock ``tools/train.py`` benefits as well:

1. torch >= 2.6 loads checkpoints with ``weights_only=True`` and MMEngine
   0.10.7 cannot read its own checkpoints then. We keep ``weights_only`` on
   and allow-list what MMEngine writes (see :mod:`mmtolerant.utils.checkpoint`).
2. Distributed training on machines without CUDA: MMEngine always calls
   ``torch.cuda.set_device`` when it initialises the process group, a CUDA
   backend (NCCL) cannot run, and DDP rejects ``device_ids`` for CPU modules.
   Without CUDA we skip ``set_device``, fall back to gloo, and give DDP
   ``device_ids=None``. With CUDA nothing changes.
"""
import functools
import logging

import torch

_APPLIED = False


def _log(msg: str) -> None:
    from mmengine.logging import print_log
    print_log(f'[mmtolerant] {msg}', logger='current', level=logging.INFO)


def _patch_init_dist_pytorch() -> None:
    import mmengine.dist.utils as dist_utils
    original = dist_utils._init_dist_pytorch
    if getattr(original, '_mmtolerant_patched', False):
        return

    @functools.wraps(original)
    def init_dist_pytorch(backend='nccl', init_backend='torch', **kwargs):
        if torch.cuda.is_available() or init_backend != 'torch':
            return original(backend, init_backend=init_backend, **kwargs)
        if backend != 'gloo':
            _log(f'no CUDA device: using the gloo backend instead of '
                 f'{backend!r} for distributed training')
            backend = 'gloo'
        torch.distributed.init_process_group(backend=backend, **kwargs)

    init_dist_pytorch._mmtolerant_patched = True
    dist_utils._init_dist_pytorch = init_dist_pytorch


def _patch_ddp_device_ids() -> None:
    from mmengine.model.wrappers import MMDistributedDataParallel
    original = MMDistributedDataParallel.__init__
    if getattr(original, '_mmtolerant_patched', False):
        return

    @functools.wraps(original)
    def __init__(self, module, *args, **kwargs):
        on_cuda = any(p.is_cuda for p in module.parameters())
        if not on_cuda and kwargs.get('device_ids') is not None:
            # DDP accepts device_ids only for modules on a GPU.
            kwargs['device_ids'] = None
            kwargs.pop('output_device', None)
        original(self, module, *args, **kwargs)

    __init__._mmtolerant_patched = True
    MMDistributedDataParallel.__init__ = __init__


def _patch_atomic_local_writes() -> None:
    from mmengine.fileio.backends.local_backend import LocalBackend

    from .fileio import atomic_write
    if getattr(LocalBackend.put, '_mmtolerant_patched', False):
        return

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(filepath, obj, 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj, 'w', encoding=encoding)

    put._mmtolerant_patched = True
    put.__doc__ = LocalBackend.put.__doc__
    put_text.__doc__ = LocalBackend.put_text.__doc__
    LocalBackend.put = put
    LocalBackend.put_text = put_text


def end_distributed() -> None:
    """Tear the process group down after a finished run (what torchrun's
    documentation asks of every script; MMEngine's runner leaves it up).
    Without it, NCCL warns at exit that the group was not destroyed, and a
    gloo rank whose peer has already exited may abort in the group's
    destructor (``terminate called without an active exception``) after
    the work is done. The ranks meet first, so none tears down while
    another still talks to it. No-op outside distributed runs."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def apply_compat_fixes() -> None:
    """Apply all fixes; safe to call more than once."""
    global _APPLIED
    if _APPLIED:
        return
    from .checkpoint import register_safe_loader
    register_safe_loader()
    _patch_init_dist_pytorch()
    _patch_ddp_device_ids()
    _patch_atomic_local_writes()
    _APPLIED = True
