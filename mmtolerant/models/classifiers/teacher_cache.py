"""Replay a frozen teacher's outputs instead of recomputing them.

When the training pipeline is deterministic (no random augmentation, no
batch augments), the teacher's logits for a sample are the same in every
epoch: the first epoch computes them, every later epoch reads them back, so
the student trains at the cost of plain training (the idea of FKD, for the
case where one "augmentation" per sample is all there is).

Each cached sample also keeps a fingerprint of the input the teacher saw
(its preprocessed pixels' L1 norm and their dot product with a fixed
pseudo-random pattern, so that a flip or a shift changes it too). A sample whose input
differs from the cached one stops training with an error instead of
receiving another image's targets: a random transform, Mixup/CutMix, or a
dataset wrapper whose samples share a ``sample_idx`` (``ConcatDataset``).
"""
from typing import Optional

import torch
from mmengine.logging import print_log

DTYPES = {'float32': torch.float32, 'float16': torch.float16}


class TeacherOutputCache:
    """Teacher logits by ``sample_idx``, on the CPU.

    Memory: ``samples x classes x (4 | 2) bytes`` (float32 | float16) plus
    8 bytes of fingerprint per sample, per process (each DDP rank caches
    the samples it sees). The cache lives in memory only: after a resume the
    first epoch fills it again from the live teacher, which gives the same
    values.

    Args:
        dtype (str): ``'float32'`` (replays the teacher's logits exactly) or
            ``'float16'`` (half the memory; logits rounded to 3 significant
            digits).
    """

    def __init__(self, dtype: str = 'float32'):
        if dtype not in DTYPES:
            raise ValueError(f'teacher_cache.dtype must be one of '
                             f'{sorted(DTYPES)}, got {dtype!r}')
        self.dtype = DTYPES[dtype]
        self.logits: Optional[torch.Tensor] = None
        self.prints = torch.zeros(0, 2, dtype=torch.float32)
        self._patterns = {}
        self.filled = torch.zeros(0, dtype=torch.bool)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return int(self.filled.sum())

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

    def _grow(self, size: int, num_classes: int) -> None:
        if self.logits is not None and size <= len(self.filled):
            return
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
            f'[mmtolerant] teacher cache: room for {capacity} samples x '
            f'{num_classes} classes ({self.nbytes / 2**20:.1f} MiB of CPU '
            'memory)', logger='current')

    def lookup(self, index: torch.Tensor,
               inputs: torch.Tensor) -> Optional[torch.Tensor]:
        """The cached logits (float32, on ``inputs.device``) when every
        sample of the batch is cached, else None."""
        if self.logits is None or int(index.max()) >= len(self.filled) \
                or not bool(self.filled[index].all()):
            self.misses += 1
            return None
        current = self.fingerprint(inputs)
        stored = self.prints[index]
        # Both parts are sums of |pixels| at most: compare on that scale.
        scale = stored[:, :1] + 1.0
        bad = ((current - stored).abs() > 1e-4 * scale).any(1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise RuntimeError(
                f'teacher_cache: sample_idx {int(index[i])} reached the '
                f'teacher as a different input than when it was cached '
                f'(fingerprint {current[i].tolist()} vs '
                f'{stored[i].tolist()}). The cache needs a '
                'deterministic training input: no random transforms in the '
                'train pipeline, no batch augments, and one sample per '
                'sample_idx (not ConcatDataset). Remove teacher_cache to '
                'train with the live teacher.')
        self.hits += 1
        return self.logits[index].to(device=inputs.device,
                                     dtype=torch.float32)

    def store(self, index: torch.Tensor, inputs: torch.Tensor,
              logits: torch.Tensor) -> None:
        self._grow(int(index.max()) + 1, logits.shape[1])
        self.logits[index] = logits.detach().to('cpu', self.dtype)
        self.prints[index] = self.fingerprint(inputs)
        self.filled[index] = True


def teacher_cache_from_cfg(cfg: dict, owner: str) -> TeacherOutputCache:
    """Build a cache from its config (``dict()`` or ``dict(dtype=...)``),
    refusing anything else with an error that starts with ``owner``."""
    if not isinstance(cfg, dict):
        raise ValueError(f'{owner}: teacher_cache must be None or a dict '
                         f"such as dict(dtype='float16'), got {cfg!r}")
    unknown = sorted(set(cfg) - {'dtype'})
    if unknown:
        raise ValueError(f'{owner}: unknown teacher_cache keys {unknown} '
                         '(known: dtype)')
    try:
        return TeacherOutputCache(**cfg)
    except ValueError as e:
        raise ValueError(f'{owner}: {e}') from None
