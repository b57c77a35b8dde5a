"""Replay a frozen teacher's outputs instead of recomputing them.

When the training pipeline is deterministic (no random augmentation, no
batch augments), the teacher's logits for a sample are the same in every
epoch: the first epoch computes them, every later epoch reads them back, so
the student trains at the cost of plain training (the idea of FKD, for the
case where one "augmentation" per sample is all there is).

With a random pipeline, ``views=V`` keys the cache by (sample, view): the
training set is wrapped in :class:`~mmtolerant.datasets.AugmentationViews`
and sampled by :class:`~mmtolerant.datasets.AugmentationViewSampler`, so
that epoch e shows view ``e % V`` of each sample, always the same image. The
teacher then runs once per sample and view, in the first V epochs.

Each cached sample also keeps a fingerprint of the input the teacher saw
(its preprocessed pixels' L1 norm and their dot product with a fixed
pseudo-random pattern, so that a flip or a shift changes it too). A sample
whose input differs from the cached one stops training with an error instead
of receiving another image's targets: a random transform, Mixup/CutMix, or a
dataset wrapper whose samples share a ``sample_idx`` (``ConcatDataset``).

For ImageNet-sized caches, ``topk=k`` stores FKD's compressed soft labels
(the k largest logits and their classes; how a row is stored and rebuilt:
:mod:`~mmtolerant.models.classifiers.soft_label_codec`) and, under DDP,
``shared`` keeps one copy per node in shared memory instead of one per rank.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.dist import all_gather, all_reduce, get_world_size
from mmengine.logging import print_log

from mmtolerant.utils.node_shared_memory import (NodeSharedMemoryError,
                                                 node_shared_tensors)
from .soft_label_codec import SoftLabelCodec

_DETERMINISTIC = (
    'The cache needs a deterministic training input: no random transforms '
    'in the train pipeline unless teacher_cache.views is set, no batch '
    'augments, and one sample per sample_idx (not ConcatDataset). Remove '
    'teacher_cache to train with the live teacher.')


class TeacherOutputCache:
    r"""Teacher logits by ``sample_idx`` (and view), on the CPU.

    **What an entry holds**: the rows of a :class:`SoftLabelCodec` (the
    full logits, ``classes x (4 | 2)`` bytes, or with ``topk=k`` FKD's top-k
    soft label, ``k x (4 | 2) + k x (2 | 4) + 4`` bytes; formulas, and the
    tolerance of top k against the full cache, in
    :mod:`~mmtolerant.models.classifiers.soft_label_codec`), plus 8 bytes of
    fingerprint and a 1-byte flag.

    **Memory** is ``entries x bytes per entry``: ``entries`` is the training
    set's size x views when it is reserved (as ``TeacherCacheLoggerHook``
    does); else the arrays grow by doubling, to at most twice that, or 1024
    entries. Under DDP the ranks share what they compute (each step in which
    some rank's batch was not cached, the ranks that computed send that
    step's entries to all), so every rank sees the whole cache and the
    teacher runs once per sample and view for the whole job, not once per
    rank. ``shared`` says where that cache lives:

    - ``'auto'`` (default): one copy per node, in shared memory that the
      node's ranks map (a file in ``/dev/shm``, or ``tempfile.gettempdir()``
      when ``/dev/shm`` lacks room, removed as soon as every local rank has
      mapped it, so that a crash leaves nothing behind), when the run
      is distributed with more than one rank on the node; else (one process,
      one rank per node, or no room anywhere: logged) private memory in
      every process;
    - ``True``: as ``'auto'``, but a distributed run that cannot share the
      copy on a node stops with an error instead of falling back;
    - ``False``: private memory in every process (a whole copy per rank).

    The cache lives in memory only: after a resume the first epochs fill it
    again from the live teacher, which gives the same values (a miss trains
    on what a replay will give: rounded to the cache dtype, rebuilt from
    the top k).

    Args:
        dtype (str): ``'float32'`` (replays the teacher's logits exactly) or
            ``'float16'`` (half the memory; logits rounded to 3 significant
            digits). Defaults to ``'float32'``.
        views (int, optional): Augmentation views per sample for a random
            training pipeline (see the module docstring); None for a
            deterministic pipeline (one entry per sample). Defaults to None.
        topk (int, optional): Store only the k largest logits, 2 <= k <
            classes (FKD uses 5..20), for distillation at temperature 1.
            Defaults to None (all logits).
        shared (bool | str): ``'auto'``, True or False (see above).
            Defaults to ``'auto'``.
    """

    def __init__(self,
                 dtype: str = 'float32',
                 views: Optional[int] = None,
                 topk: Optional[int] = None,
                 shared='auto'):
        # Checks dtype and topk (the number of classes with the first batch).
        self.codec = SoftLabelCodec(dtype, topk)
        if views is not None and not _is_int(views, 1):
            raise ValueError('teacher_cache.views must be None or an int '
                             f'>= 1, got {views!r}')
        if not (shared is True or shared is False or shared == 'auto'):
            raise ValueError("teacher_cache.shared must be True, False or "
                             f"'auto', got {shared!r}")
        self.views = views
        self.shared = shared
        # name -> (capacity, *row shape) tensor; None until the first store
        self._arrays: Optional[Dict[str, torch.Tensor]] = None
        self.shared_by = 1  # processes that map this copy (1: private)
        self._patterns = {}
        self.hits = 0  # batches replayed
        self.misses = 0  # batches the teacher ran on
        self._reserved = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.codec.dtype

    @property
    def topk(self) -> Optional[int]:
        return self.codec.topk

    @property
    def num_classes(self) -> Optional[int]:
        """Known from the first batch the teacher computed."""
        return self.codec.num_classes

    # --- size --------------------------------------------------------------

    @property
    def filled(self) -> torch.Tensor:
        """Whether each entry is cached (empty before the first store)."""
        if self._arrays is None:
            return torch.zeros(0, dtype=torch.bool)
        return self._arrays['filled']

    def __len__(self) -> int:
        return int(self.filled.sum())

    @property
    def computed(self) -> int:
        """Entries the teacher filled, on all ranks, since the cache began
        or was last cleared for a new teacher (an entry is filled once:
        in between, the cache only grows)."""
        return len(self)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (``capacity x entry_bytes``); a shared copy
        adds under 64 bytes of alignment per array, once per node."""
        if self._arrays is None:
            return 0
        return sum(a.numel() * a.element_size()
                   for a in self._arrays.values())

    def entry_bytes(self, num_classes: int) -> int:
        """Bytes per entry (sample x view) for ``num_classes`` classes."""
        return sum(
            math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            for shape, dtype in self._layout(num_classes).values())

    def _layout(self, num_classes: int) -> Dict[str, tuple]:
        """name -> (row shape, dtype) of the arrays."""
        layout = self.codec.layout(num_classes)
        layout['prints'] = ((2, ), torch.float32)
        layout['filled'] = ((), torch.bool)
        return layout

    def clear(self) -> None:
        """Forget every entry (for a new teacher), keeping the memory.
        Under DDP every rank clears the copy it maps, before any rank
        stores again (a cleared entry is computed again, so a late clear
        costs teacher passes, never a wrong target)."""
        if self._arrays is not None:
            self._arrays['filled'].zero_()

    def reserve(self, entries: int) -> None:
        """Make the first allocation hold ``entries`` (the training set's
        size x views, as ``TeacherCacheLoggerHook`` reserves it), so the
        cache takes exactly what it needs instead of growing by doubling
        (up to twice that; in shared memory each growth is a collective
        re-allocation)."""
        self._reserved = int(entries)

    def _grow(self, size: int) -> None:
        """Room for keys below ``size``. Under DDP every rank calls it with
        the same sizes in the same order (from ``_put`` of the same gathered
        entries): a shared allocation is a collective step."""
        current = len(self.filled)
        if self._arrays is not None and size <= current:
            return
        if self._arrays is None and self._reserved:
            capacity = max(size, self._reserved)
        else:
            capacity = max(size, 2 * current, 1024)
        self._arrays, self.shared_by = self._allocate(capacity)
        where = 'CPU memory in every process' if self.shared_by == 1 else (
            f'shared memory, one copy for the {self.shared_by} ranks of '
            'this node')
        kept = '' if self.topk is None else f' (top {self.topk} kept)'
        print_log(
            f'[mmtolerant] teacher cache: room for {capacity} entries x '
            f'{self.num_classes} classes{kept} ({self.nbytes / 2**20:.1f} '
            f'MiB of {where})', logger='current')

    def _allocate(self, capacity: int
                  ) -> Tuple[Dict[str, torch.Tensor], int]:
        """New arrays for ``capacity`` entries holding the current ones, and
        how many processes map them."""
        shapes = {name: ((capacity, ) + shape, dtype)
                  for name, (shape, dtype) in self._layout(
                      self.num_classes).items()}
        old = self._arrays
        if get_world_size() > 1 and self.shared is not False:
            arrays, shared_by = self._shared_arrays(shapes, old)
            if arrays is not None:
                # The node's first rank copied the old entries in already.
                return arrays, shared_by
        arrays = {name: torch.zeros(shape, dtype=dtype)
                  for name, (shape, dtype) in shapes.items()}
        _copy(old, arrays)
        return arrays, 1

    def _shared_arrays(self, shapes: Dict[str, tuple],
                       old: Optional[Dict[str, torch.Tensor]]
                       ) -> Tuple[Optional[Dict[str, torch.Tensor]], int]:
        """One copy per node (see :mod:`mmtolerant.utils.node_shared_memory`),
        or ``(None, 1)`` where ``shared='auto'`` falls back to a private
        copy. Collective: every rank calls it."""
        try:
            return node_shared_tensors(
                'teacher cache', shapes, lambda new: _copy(old, new),
                required=self.shared is True)
        except NodeSharedMemoryError as e:
            raise RuntimeError(
                'teacher_cache.shared=True: no shared memory for the cache '
                f'on every node ({e.reasons}); free room in /dev/shm (or '
                "the temporary folder), or set teacher_cache.shared='auto' "
                'to hold a private copy where sharing fails') from None

    # --- keys and fingerprints ---------------------------------------------

    def fingerprint(self, inputs: torch.Tensor) -> torch.Tensor:
        """(L1 norm, projection on a fixed +-1 pattern) of each input."""
        flat = inputs.detach().flatten(1).float()
        key = (flat.shape[1], flat.device)
        if key not in self._patterns:
            generator = torch.Generator().manual_seed(20190127)
            pattern = torch.randint(0, 2, (flat.shape[1], ),
                                    generator=generator) * 2.0 - 1.0
            self._patterns[key] = pattern.to(flat.device)
        pattern = self._patterns[key]
        return torch.stack([flat.abs().sum(1), flat @ pattern], 1).cpu()

    def keys(self, data_samples) -> torch.Tensor:
        """Cache keys of a batch: ``sample_idx`` (x views + ``aug_view``)."""
        index = [s.metainfo.get('sample_idx') for s in data_samples]
        if any(i is None for i in index):
            raise ValueError(
                'teacher_cache needs the `sample_idx` of every training '
                "sample (PackInputs' default meta_keys keep it)")
        index = torch.as_tensor(index, dtype=torch.long)
        if self.views is None:
            return index
        views = [s.metainfo.get('aug_view') for s in data_samples]
        if any(v is None for v in views):
            raise ValueError(
                f'teacher_cache.views={self.views} needs the training set '
                "wrapped in dict(type='AugmentationViews', dataset=...) and "
                "sampled by dict(type='AugmentationViewSampler', "
                f'views={self.views}) (a chain with '
                'generations.teacher_cache.views sets both up itself)')
        if max(views) >= self.views:
            raise ValueError(
                f'a training sample is augmentation view {max(views)} '
                f'but teacher_cache.views={self.views}: the sampler\'s views '
                'must equal the cache\'s')
        return index * self.views + torch.as_tensor(views, dtype=torch.long)

    # --- encoding (see soft_label_codec) ------------------------------------

    def encode(self, logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The rows an entry stores for a batch of teacher logits."""
        return self.codec.encode(logits)

    def decode(self, rows: Dict[str, torch.Tensor],
               device: torch.device) -> torch.Tensor:
        """Float32 logits on ``device`` from stored rows."""
        return self.codec.decode(rows, device)

    # --- replay ------------------------------------------------------------

    def _missing(self, index: torch.Tensor) -> bool:
        if self._arrays is None:
            return True
        # One read of the flags: a key beyond them is not cached either.
        filled = self.filled
        last = len(filled) - 1
        cached = (index <= last) & filled[index.clamp(max=last)]
        return not bool(cached.all())

    def lookup(self, index: torch.Tensor,
               inputs: torch.Tensor) -> Optional[torch.Tensor]:
        """The cached logits (float32, on ``inputs.device``) when every
        sample of the batch is cached, else None."""
        cached, error = self._replay(index, inputs)
        if error is not None:
            raise RuntimeError(error)
        return cached

    def _replay(self, index: torch.Tensor, inputs: torch.Tensor
                ) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        """``(cached logits or None, None)``, or ``(None, message)`` when a
        cached sample's input changed (raised by the caller, so that under
        DDP every rank can raise it together)."""
        if self._missing(index):
            self.misses += 1
            return None, None
        current = self.fingerprint(inputs)
        stored = self._arrays['prints'][index]
        # Both parts are sums of |pixels| at most: compare on that scale.
        scale = stored[:, :1] + 1.0
        bad = ((current - stored).abs() > 1e-4 * scale).any(1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            return None, (
                f'teacher_cache: sample_idx {int(index[i])} reached the '
                f'teacher as a different input than when it was cached '
                f'(fingerprint {current[i].tolist()} vs '
                f'{stored[i].tolist()}). {_DETERMINISTIC}')
        self.hits += 1
        return self.decode(self._rows(index), inputs.device), None

    def _rows(self, index: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {name: self._arrays[name][index]
                for name in self.codec.layout(self.num_classes)}

    def store(self, index: torch.Tensor, inputs: torch.Tensor,
              logits: torch.Tensor) -> None:
        """Cache a batch's teacher logits (one process; under DDP the ranks
        store what they exchange in :meth:`targets`)."""
        self._put(index, self.fingerprint(inputs), self.encode(logits))

    def _put(self, index: torch.Tensor, prints: torch.Tensor,
             rows: Dict[str, torch.Tensor]) -> None:
        self._grow(int(index.max()) + 1)
        arrays = self._arrays
        for name, value in rows.items():
            arrays[name][index] = value.to('cpu', arrays[name].dtype)
        arrays['prints'][index] = prints.cpu().float()
        # The flag last: in shared memory another local rank may see it
        # set while this rank writes the entry. That is harmless: a rank
        # reads an entry only in a later step than the collective that
        # delivered it, and by then it has written the whole entry itself
        # (every rank writes every gathered entry); the other ranks'
        # concurrent writes of the entry are the same bytes, so no
        # interleaving of them changes what it reads. Flags are only ever
        # set during training (``clear`` resets them all between two
        # teachers), so `len()` counts exactly the entries written.
        arrays['filled'][index] = True

    def targets(self, index: torch.Tensor, inputs: torch.Tensor,
                teacher) -> torch.Tensor:
        """The teacher's logits for a batch: replayed when cached, else
        ``teacher(inputs)`` (stored, and returned as a replay will give
        them). Under DDP every rank must call it once per step: ranks
        exchange what any of them computed."""
        cached, error = self._replay(index, inputs)
        if get_world_size() == 1:
            if error is not None:
                raise RuntimeError(error)
            if cached is None:
                rows = self.encode(teacher(inputs))
                self._put(index, self.fingerprint(inputs), rows)
                cached = self._as_replayed(rows, inputs)
            return cached
        # One all-reduce: how many ranks missed, and how many found a
        # changed input (then every rank stops, none waits for the others).
        flags = torch.tensor(
            [float(cached is None and error is None),
             float(error is not None)],
            device=inputs.device)
        all_reduce(flags)
        missed, failed = flags.tolist()
        if failed:
            raise RuntimeError(error or (
                f'teacher_cache: on {int(failed)} other rank(s) a cached '
                'sample reached the teacher as a different input than when '
                f'it was cached (their logs name it). {_DETERMINISTIC}'))
        if missed == 0:
            return cached
        if cached is None:
            rows = self.encode(teacher(inputs))
            logits = self._as_replayed(rows, inputs)
            sent = index
            prints = self.fingerprint(inputs)
        else:
            # Every rank already holds this batch's entries (all ranks
            # store all that is exchanged): nothing to send.
            logits, sent = cached, index[:0]
            rows, prints = self._rows(sent), self._arrays['prints'][sent]
        # The same order on every rank: the parts are gathered by position.
        names = list(self.codec.layout(self.num_classes))
        # Doubles carry every stored type exactly (int16 does not exist
        # in NCCL), and all parts of one all-gather share a dtype.
        exchanged = self._gather(
            [sent.to(inputs.device).double(),
             prints.to(inputs.device).double()] +
            [rows[n].to(inputs.device).double() for n in names])
        for k, p, *values in zip(*exchanged):
            if len(k):
                self._put(k.long().cpu(), p.float(),
                          dict(zip(names, values)))
        return logits

    def _as_replayed(self, rows: Dict[str, torch.Tensor],
                     inputs: torch.Tensor) -> torch.Tensor:
        """Fresh logits as a replay will give them (rounded to float16,
        rebuilt from the top k): every epoch, and a resumed run, train on
        the same targets."""
        return self.decode(rows, inputs.device)

    @staticmethod
    def _gather(parts: List[torch.Tensor]) -> List[List[torch.Tensor]]:
        """Every rank's ``parts`` (tensors of equal first dimension, which
        may differ between ranks), as lists over ranks."""
        n = torch.tensor([float(len(parts[0]))], device=parts[0].device)
        sizes = [int(s) for s in all_gather(n)]
        padded = []
        for part in parts:
            pad = part.new_zeros((max(sizes) - len(part), ) + part.shape[1:])
            padded.append(torch.cat([part, pad]))
        return [[g[:size] for g, size in zip(all_gather(p), sizes)]
                for p in padded]


def _is_int(value, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) \
        and value >= low


def _copy(old: Optional[Dict[str, torch.Tensor]],
          new: Dict[str, torch.Tensor]) -> None:
    if old is not None:
        n = len(old['filled'])
        for name, array in old.items():
            new[name][:n] = array


def teacher_cache_from_cfg(cfg: dict, owner: str) -> TeacherOutputCache:
    """Build a cache from its config (``dict()``, ``dict(dtype=...,
    views=..., topk=..., shared=...)``), refusing anything else with an
    error that starts with ``owner``."""
    if not isinstance(cfg, dict):
        raise ValueError(f'{owner}: teacher_cache must be None or a dict '
                         f"such as dict(dtype='float16'), got {cfg!r}")
    known = ('dtype', 'views', 'topk', 'shared')
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(f'{owner}: unknown teacher_cache keys {unknown} '
                         f'(known: {", ".join(known)})')
    try:
        return TeacherOutputCache(**cfg)
    except ValueError as e:
        raise ValueError(f'{owner}: {e}') from None
