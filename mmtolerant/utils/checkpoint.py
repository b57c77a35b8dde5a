"""Checkpoint loading that never executes code from the file.

torch >= 2.6 loads with ``weights_only=True``: only tensors, containers and
allow-listed globals are accepted, so a crafted pickle cannot run code.
MMEngine 0.10.7 writes a few globals into its own checkpoints (the message
hub's ``HistoryBuffer`` and numpy arrays/scalars in the logged statistics),
so its ``load_checkpoint``/``resume`` break on them. Rather than turning
``weights_only`` off, this module allow-lists exactly those globals and
registers loaders for local paths and http(s) URLs that use them
(:func:`register_safe_loader`). MMEngine's own URL loader goes through
``torch.hub.load_state_dict_from_url``, which loads with
``weights_only=False``: a crafted file on a server would run its code.
"""
import hashlib
import http.client
import os
import os.path as osp
import pickle
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging import HistoryBuffer

__all__ = [
    'CheckpointLoadError', 'safe_globals_for_mmengine', 'safe_torch_load',
    'download_checkpoint', 'register_safe_loader', 'extract_state_dict'
]


class CheckpointLoadError(RuntimeError):
    """A checkpoint file is missing, unreadable or not allowed to load."""


def _history_buffer_getattr(obj, name, *default):
    """Stand-in for ``builtins.getattr`` while unpickling.

    ``HistoryBuffer`` keeps its statistics methods in a dict, which pickle
    stores as ``getattr(HistoryBuffer, 'min')``. Only public attributes of
    ``HistoryBuffer`` resolve; anything else is refused, so the general
    ``getattr`` (a gadget for arbitrary calls) is never reachable.
    """
    if obj is HistoryBuffer and isinstance(name, str) \
            and not name.startswith('_') and hasattr(HistoryBuffer, name):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint: '
        'only public HistoryBuffer attributes are allowed')


def _numpy_globals() -> List[Any]:
    from numpy.core import multiarray as np_multiarray  # noqa: F401
    try:  # numpy >= 2
        from numpy._core import multiarray as core_multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        core_multiarray = np_multiarray
    entries: List[Any] = [np.ndarray, np.dtype]
    for fn_name in ('_reconstruct', 'scalar'):
        fn = getattr(core_multiarray, fn_name)
        # Both spellings: numpy-2 files say ``numpy._core``, numpy-1 files
        # say ``numpy.core``.
        entries.append((fn, f'numpy._core.multiarray.{fn_name}'))
        entries.append((fn, f'numpy.core.multiarray.{fn_name}'))
    # dtype classes (``numpy.dtypes.Float64DType`` ...) appear in pickled
    # numpy scalars; torch's own scan for unsafe globals does not list them.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                entries.append(obj)
    return entries


def safe_globals_for_mmengine() -> List[Any]:
    """The globals an MMEngine runner checkpoint needs, and nothing more."""
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')
            ] + _numpy_globals()


def safe_torch_load(filename: str,
                    map_location: Any = 'cpu',
                    source: Optional[str] = None) -> Any:
    """``torch.load`` with ``weights_only=True``, MMEngine's globals allowed.

    Args:
        filename (str): The local file.
        map_location: As in ``torch.load``. Defaults to ``'cpu'``.
        source (str, optional): Where the file was downloaded from, named
            in errors before the file.

    Raises:
        CheckpointLoadError: the file is missing, unreadable, or holds
            something that would need code execution to load. The message
            names the file.
    """
    if not isinstance(filename, (str, os.PathLike)):
        raise CheckpointLoadError(
            f'checkpoint must be a file path, got {filename!r}')
    filename = os.fspath(filename)
    if not osp.isfile(filename):
        raise CheckpointLoadError(f'checkpoint {filename!r} does not exist '
                                  'or is not a file')
    shown = repr(filename) if source is None \
        else f'{source!r} (downloaded to {filename!r})'
    with open(filename, 'rb') as f:
        head = f.read(4)
    # torch.save writes a zip archive (a pickle before torch 1.6).
    if not (head == b'PK\x03\x04' or head[:1] == b'\x80'):
        raise CheckpointLoadError(
            f'{shown} is not a PyTorch checkpoint: it '
            + (f'starts with {head!r}' if head else 'is empty')
            + ' (a .pth file written by torch.save was expected; a config '
            'file goes to the config argument)')
    try:
        with torch.serialization.safe_globals(safe_globals_for_mmengine()):
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # An opcode the weights-only unpickler cannot parse at all: a
        # damaged stream. (A crafted one is refused at the global or call
        # it names; either way nothing runs.)
        if 'Unsupported operand' in str(e):
            raise CheckpointLoadError(
                f'could not read checkpoint {shown}: it is damaged (its '
                f'pickle data does not parse: {_last_line(e)})') from None
        raise CheckpointLoadError(
            f'refused to load checkpoint {shown}: it holds objects that '
            'are not plain weights (loading it would execute code from the '
            f'file). Details: {e}') from None
    except Exception as e:  # truncated file, not a torch file, ...
        raise CheckpointLoadError(
            f'could not read checkpoint {shown}: '
            f'{type(e).__name__}: {e}') from None


def _last_line(error: Exception) -> str:
    """The line of torch's message that says what went wrong."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    found = [line for line in lines if 'Unsupported' in line]
    return (found or lines or [''])[0].strip()


# MMEngine logs a loader's name without its first ten characters
# ("Loads checkpoint by local_safely backend").
def load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)


def download_checkpoint(url: str) -> str:
    """The local copy of the checkpoint at ``url``, downloaded to torch's
    hub cache (``$TORCH_HOME/hub/checkpoints/``, where MMEngine's
    ``load_from_http`` puts it) unless already there. The cached name
    starts with a digest of the whole URL: two servers' files of one name
    (every chain's ``exported_model.pth``) never share a copy."""
    name = osp.basename(urlparse(url).path)
    if not name:
        raise CheckpointLoadError(
            f'checkpoint URL {url!r} does not end in a file name')
    model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    cached = osp.join(model_dir, f'{digest}-{name}')
    if not osp.isfile(cached):
        try:
            # Written to a temporary file and renamed when complete.
            torch.hub.download_url_to_file(
                url, cached, progress=os.isatty(0))
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise CheckpointLoadError(
                f'could not download checkpoint {url!r}: '
                f'{type(e).__name__}: {e}') from None
    return cached


def load_from_http_safely(url: str, map_location: Any = None) -> Any:
    """MMEngine's ``load_from_http`` with :func:`safe_torch_load`: rank 0
    downloads (:func:`download_checkpoint`), the other ranks then read its
    copy, and every rank loads it weights-only."""
    rank, world_size = get_dist_info()
    if rank == 0:
        cached = download_checkpoint(url)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached = download_checkpoint(url)
    return safe_torch_load(cached, map_location=map_location, source=url)


def register_safe_loader() -> None:
    """Make MMEngine load local and http(s) checkpoints with
    :func:`safe_torch_load`.

    MMEngine dispatches on the path prefix through ``CheckpointLoader``, for
    ``load_from``, ``resume``, ``load_checkpoint`` and ``init_cfg=dict(
    type='Pretrained')``: the empty prefix is the local file loader,
    ``http://`` and ``https://`` the download one.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_safely, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'),
        loader=load_from_http_safely,
        force=True)


def extract_state_dict(checkpoint: Any,
                       filename: Optional[str] = None) -> Dict[str, Any]:
    """The model weights of a loaded checkpoint, without wrapper prefixes."""
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, dict) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointLoadError(
            f'checkpoint {filename!r} holds no state_dict of tensors')
    # Checkpoints written from a DDP-wrapped model prefix every key.
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict)
