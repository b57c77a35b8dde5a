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
pseudo-random pattern, so that a flip or a shift changes it too). A sample whose input
differs from the cached one stops training with an error instead of
receiving another image's targets: a random transform, Mixup/CutMix, or a
dataset wrapper whose samples share a ``sample_idx`` (``ConcatDataset``).
"""
from typing import List, Optional, Tuple

import torch
from mmengine.dist import all_gather, all_reduce, get_world_size
from mmengine.logging import print_log

DTYPES = {'float32': torch.float32, 'float16': torch.float16}
_DETERMINISTIC = (
    'The cache needs a deterministic training input: no random transforms '
    'in the train pipeline unless teacher_cache.views is set, no batch '
    'augments, and one sample per sample_idx (not ConcatDataset). Remove '
    'teacher_cache to train with the live teacher.')


class TeacherOutputCache:
    """Teacher logits by ``sample_idx`` (and view), on the CPU.

    Memory: ``samples x views x classes x (4 | 2) bytes`` (float32 |
    float16) plus 9 bytes of fingerprint and flag per entry, in every
    process (exactly that when the training set's size is reserved, as
    ``TeacherCacheLoggerHook`` does; else the arrays grow by doubling, to
    at most twice that, or 1024 entries). Under DDP the ranks share what
    they compute (each step in which some rank's batch was not cached, the
    ranks exchange that step's teacher outputs), so every rank holds the
    whole cache and the teacher runs once per sample and view for the whole
    job, not once per rank.
    The cache lives in memory only: after a resume the first epochs fill it
    again from the live teacher, which gives the same values.

    Args:
        dtype (str): ``'float32'`` (replays the teacher's logits exactly) or
            ``'float16'`` (half the memory; logits rounded to 3 significant
            digits).
        views (int, optional): Augmentation views per sample for a random
            training pipeline (see the module docstring); None for a
            deterministic pipeline (one entry per sample).
    """

    def __init__(self, dtype: str = 'float32', views: Optional[int] = None):
        if dtype not in DTYPES:
            raise ValueError(f'teacher_cache.dtype must be one of '
                             f'{sorted(DTYPES)}, got {dtype!r}')
        if views is not None and (isinstance(views, bool)
                                  or not isinstance(views, int)
                                  or views < 1):
            raise ValueError('teacher_cache.views must be None or an int '
                             f'>= 1, got {views!r}')
        self.views = views
        self.dtype = DTYPES[dtype]
        self.logits: Optional[torch.Tensor] = None
        self.prints = torch.zeros(0, 2, dtype=torch.float32)
        self._patterns = {}
        self.filled = torch.zeros(0, dtype=torch.bool)
        self.hits = 0  # batches replayed
        self.misses = 0  # batches the teacher ran on
        self._reserved = 0

    def __len__(self) -> int:
        return int(self.filled.sum())

    @property
    def computed(self) -> int:
        """Entries the teacher filled, on all ranks (an entry is filled
        once: the cache only grows)."""
        return len(self)

    @property
    def nbytes(self) -> int:
        if self.logits is None:
            return 0
        return (self.logits.numel() * self.logits.element_size() +
                self.prints.numel() * 4 + self.filled.numel())

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

    def reserve(self, entries: int) -> None:
        """Make the first allocation hold ``entries`` (the training set's
        size x views, as ``TeacherCacheLoggerHook`` reserves it), so the
        cache takes exactly what it needs instead of growing by doubling
        (up to twice that)."""
        self._reserved = int(entries)

    def _grow(self, size: int, num_classes: int) -> None:
        if self.logits is not None and size <= len(self.filled):
            return
        if self.logits is None and self._reserved:
            capacity = max(size, self._reserved)
        else:
            capacity = max(size, 2 * len(self.filled), 1024)
        logits = torch.zeros(capacity, num_classes, dtype=self.dtype)
        prints = torch.zeros(capacity, 2, dtype=torch.float32)
        filled = torch.zeros(capacity, dtype=torch.bool)
        if self.logits is not None:
            n = len(self.filled)
            logits[:n], prints[:n], filled[:n] = (self.logits, self.prints,
                                                  self.filled)
        self.logits, self.prints, self.filled = logits, prints, filled
        print_log(
            f'[mmtolerant] teacher cache: room for {capacity} entries x '
            f'{num_classes} classes ({self.nbytes / 2**20:.1f} MiB of CPU '
            'memory)', logger='current')

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

    def _missing(self, index: torch.Tensor) -> bool:
        if self.logits is None:
            return True
        # One read of the flags: a key beyond them is not cached either.
        last = len(self.filled) - 1
        cached = (index <= last) & self.filled[index.clamp(max=last)]
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
        stored = self.prints[index]
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
        return self.logits[index].to(device=inputs.device,
                                     dtype=torch.float32), None

    def store(self, index: torch.Tensor, inputs: torch.Tensor,
              logits: torch.Tensor) -> None:
        self._put(index, self.fingerprint(inputs), logits)

    def _put(self, index, prints, logits) -> None:
        self._grow(int(index.max()) + 1, logits.shape[1])
        self.logits[index] = logits.detach().to('cpu', self.dtype)
        self.prints[index] = prints.cpu()
        self.filled[index] = True

    def targets(self, index: torch.Tensor, inputs: torch.Tensor,
                teacher) -> torch.Tensor:
        """The teacher's logits for a batch: replayed when cached, else
        ``teacher(inputs)`` (and stored). Under DDP every rank must call it
        once per step: ranks exchange what any of them computed."""
        cached, error = self._replay(index, inputs)
        if get_world_size() == 1:
            if error is not None:
                raise RuntimeError(error)
            if cached is None:
                cached = self._as_stored(teacher(inputs))
                self.store(index, inputs, cached)
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
        logits = self._as_stored(teacher(inputs)) if cached is None \
            else cached
        prints = self.fingerprint(inputs).to(inputs.device)
        shared = self._gather([
            index.to(inputs.device).double(),
            prints.double(),
            logits.detach().double()
        ])
        for k, p, v in zip(*shared):
            if len(k):
                self._put(k.long().cpu(), p.float(), v.float())
        return logits

    def _as_stored(self, logits: torch.Tensor) -> torch.Tensor:
        """Fresh logits as a replay will give them (rounded to float16 for a
        float16 cache): every epoch, and a resumed run, train on the same
        targets."""
        if self.dtype == torch.float32:
            return logits
        return logits.to(self.dtype).to(logits.dtype)

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


def teacher_cache_from_cfg(cfg: dict, owner: str) -> TeacherOutputCache:
    """Build a cache from its config (``dict()`` or ``dict(dtype=...)``),
    refusing anything else with an error that starts with ``owner``."""
    if not isinstance(cfg, dict):
        raise ValueError(f'{owner}: teacher_cache must be None or a dict '
                         f"such as dict(dtype='float16'), got {cfg!r}")
    unknown = sorted(set(cfg) - {'dtype', 'views'})
    if unknown:
        raise ValueError(f'{owner}: unknown teacher_cache keys {unknown} '
                         '(known: dtype, views)')
    try:
        return TeacherOutputCache(**cfg)
    except ValueError as e:
        raise ValueError(f'{owner}: {e}') from None
