"""Distributed runs: start and end them, also on machines without CUDA,
and let every rank agree with rank 0.

MMEngine's own start (``init_dist``) always calls ``torch.cuda.set_device``,
and its runner gives DDP ``device_ids=[local_rank]``; without CUDA both fail
and NCCL cannot run. Where there is no CUDA (and only there),
:func:`init_distributed` starts the process group over gloo without
touching CUDA and :func:`cpu_ddp_cfg` gives DDP ``device_ids=None``. Our
``tools/train.py``, ``tools/test.py`` and the ``GenerationRunner`` use both;
nothing of MMEngine is patched.
"""
import os
import os.path as osp
import secrets
import socket
from typing import Any

import torch
from mmengine.dist import (all_gather_object, all_reduce, barrier, broadcast,
                           broadcast_object_list, get_rank, init_dist,
                           is_distributed, is_main_process)
from mmengine.logging import print_log


def _no_cuda() -> bool:
    return not torch.cuda.is_available()


def _log_gloo(backend: str) -> None:
    print_log(f'[mmtolerant] no CUDA device: using the gloo backend instead '
              f'of {backend!r} for distributed training', logger='current')


def init_distributed(launcher: str, dist_cfg: dict = None) -> None:
    """Start the process group of a ``launcher`` run (a no-op for
    ``'none'`` or a group already started): MMEngine's ``init_dist``, or
    without CUDA torch's own start over gloo (``launcher='pytorch'``:
    torchrun's environment; ``'slurm'``: srun's, read as MMEngine reads
    it)."""
    if launcher == 'none' or is_distributed():
        return
    dist_cfg = dict(dist_cfg or {})
    if _no_cuda() and launcher in ('pytorch', 'slurm'):
        if launcher == 'slurm':
            _slurm_environment(dist_cfg.pop('port', None))
        backend = dist_cfg.pop('backend', 'nccl')
        if backend != 'gloo':
            _log_gloo(backend)
        timeout = dist_cfg.pop('timeout', None)
        if timeout is not None:
            import datetime
            dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
        torch.distributed.init_process_group(backend='gloo', **dist_cfg)
        return
    init_dist(launcher, **dist_cfg)


def _slurm_environment(port=None) -> None:
    """torch's rendezvous variables from an srun task's, as MMEngine's
    SLURM start sets them (which also picks a GPU: none here)."""
    import subprocess
    node_list = os.environ['SLURM_NODELIST']
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def cpu_ddp_cfg(cfg) -> None:
    """Without CUDA, make a distributed config's DDP wrapper take CPU
    modules (``device_ids=None``, MMEngine's other defaults kept) and its
    backend gloo. Nothing changes where CUDA is available."""
    if not _no_cuda() or cfg.get('launcher', 'none') == 'none':
        return
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    else:
        wrapper.setdefault('device_ids', None)
    dist_cfg = cfg.setdefault('env_cfg', dict()).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        _log_gloo(dist_cfg.get('backend', 'nccl'))
    dist_cfg['backend'] = 'gloo'


def end_distributed() -> None:
    """Tear the process group down after a finished run (what torchrun's
    documentation asks of every script; MMEngine's runner leaves it up).
    Without it, NCCL warns at exit that the group was not destroyed, and a
    gloo rank whose peer has already exited may abort in the group's
    destructor after the work is done. The ranks meet first, so none tears
    down while another still talks to it. No-op outside distributed runs."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def agree(value: Any) -> Any:
    """Rank 0's value on every rank (files may lag on other nodes)."""
    if not is_distributed():
        return value
    holder = [value]
    broadcast_object_list(holder, src=0)
    return holder[0]


def use_rank0_buffers(model) -> bool:
    """Give every rank rank 0's buffers (BatchNorm statistics: DDP keeps
    the weights equal, each rank's statistics come from its own share of
    the data); whether they were already equal on all ranks. True when not
    distributed."""
    if not is_distributed():
        return True
    differ = None
    for buffer in model.buffers():
        theirs = buffer.detach().clone()
        broadcast(theirs, src=0)
        same = torch.equal(theirs, buffer)
        if not same:
            buffer.data.copy_(theirs)
        flag = torch.tensor([0.0 if same else 1.0], device=buffer.device)
        differ = flag if differ is None else differ + flag
    if differ is None:
        return True
    all_reduce(differ)
    return float(differ) == 0


SHARED_CHECK_FILE = '.shared_by_all_ranks'


def check_shared_dir(path: str, what: str = 'work_dir') -> None:
    """Stop every rank, with one clear message, unless every rank sees the
    folder ``path`` that rank 0 writes to (on several nodes: a filesystem
    they all mount). Rank 0 writes a random token there, the ranks meet,
    each reads it back, and all learn who did not find it. No-op outside
    distributed runs."""
    if not is_distributed():
        return
    token = agree(secrets.token_hex(16) if is_main_process() else None)
    check_file = osp.join(path, SHARED_CHECK_FILE)
    if is_main_process():
        os.makedirs(path, exist_ok=True)
        with open(check_file, 'w') as f:
            f.write(token)
    barrier()
    try:
        with open(check_file) as f:
            seen = f.read() == token
    except OSError:
        seen = False
    views = all_gather_object((get_rank(), socket.gethostname(), seen))
    if is_main_process():
        os.remove(check_file)
    blind = [(rank, host) for rank, host, ok in views if not ok]
    if blind:
        ranks = ', '.join(f'rank {rank} on {host}' for rank, host in blind)
        raise RuntimeError(
            f'the {what} {path} is not shared by every rank: {ranks} did not '
            f'find the file rank 0 (on {views[0][1]}) had just written there. '
            'Ranks read what rank 0 writes (teachers, plans, checkpoints): '
            'on several nodes the work_dir must lie on a filesystem they '
            'all mount (NFS, Lustre, GPFS...). Pass such a --work-dir; '
            'nothing was trained.')
