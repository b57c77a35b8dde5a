r"""How a row of teacher logits is stored in the teacher cache, and rebuilt.

**Full logits** (``topk=None``): the teacher's logits :math:`t_1 .. t_C`,
``C x (4 | 2)`` bytes (float32 | float16); a replay gives them back, exactly
in float32, rounded to 3 significant digits in float16.

**Top k** (``topk=k``, FKD's compressed soft label): the k largest logits
:math:`t_i, i \in K` (``k x (4 | 2)`` bytes), their classes K (``k x 2``
bytes, int16, or ``k x 4`` beyond 32767 classes) and

.. math:: \rho = \log \sum_{j \notin K} e^{t_j}

(4 bytes, float32), the log-sum-exp of the other logits. A replay gives
each of the :math:`C-k` other classes the logit :math:`\rho - \log(C-k)`:
the teacher's remaining probability mass :math:`r = 1 - \sum_{i \in K} p_i`
spread uniformly over them, as FKD does, so that

.. math:: \hat p_i = p_i \ (i \in K), \qquad
          \hat p_j = r / (C-k) \ (j \notin K)

at temperature 1 (up to the cache dtype's rounding of :math:`t_i`). At
temperature 1 only: at :math:`\tau \ne 1` the other classes' true mass,
:math:`\sum_{j \notin K} e^{t_j / \tau}`, is not a function of
:math:`\rho`, so the replayed probabilities differ from the teacher's in
the top k too. Storing :math:`\rho` rather than the
log-sum-exp of all logits keeps r exact when float16 rounds the top logits:
:math:`1 - \sum_{i \in K} p_i` computed from rounded :math:`t_i` cancels
when the top k hold nearly all the mass.

**Top-k against the full cache**, for ``DistillKLLoss`` at temperature 1,
whose gradient with respect to a sample's student logits is :math:`q - p`:
the targets differ from the teacher's only outside the top k, so each
sample's gradient moves by at most :math:`2r` in L1 norm (a bound, tested).
The loss value (measured in ``benchmarks/README.md``, k = 5; tested on the
synthetic teacher) moves by 0.1% for a trained digits teacher (r = 0.006)
and by 1.5% for a synthetic 1000-class teacher (r = 0.095) against a
random student, but by +60-90% (k = 20..5; 0.1 nats, mostly the teacher's
own entropy, which has no gradient) against a student that already matches
the teacher's tail, whose gradient moves by 5-9% (relative L2). At higher
temperatures the classes outside the top k carry much of the mass: at tau
4 with 1000 classes the gradient moved by 36-118%, so ``topk`` is for
temperature 1, as in FKD. Measured too: renormalising the top k instead
(the other classes at probability 0) was worse in every case; spreading
:math:`1 - \sum p_i` was never better and, in float16 at tau 4, far worse.

The codec's messages name the ``teacher_cache`` settings, which is where a
user sets ``dtype`` and ``topk``.
"""
import math
from typing import Dict, Optional

import torch

DTYPES = {'float32': torch.float32, 'float16': torch.float16}


class SoftLabelCodec:
    """Encodes teacher logits into the rows of a cache entry and back.

    The number of classes C is learnt from the first batch encoded and
    fixed from then on.

    Args:
        dtype (str): ``'float32'`` or ``'float16'``: the stored logits (all
            of them, or the top k). Defaults to ``'float32'``.
        topk (int, optional): Store only the k largest logits, 2 <= k < C
            (checked when C is known). Defaults to None (all logits).
    """

    def __init__(self, dtype: str = 'float32', topk: Optional[int] = None):
        if dtype not in DTYPES:
            raise ValueError(f'teacher_cache.dtype must be one of '
                             f'{sorted(DTYPES)}, got {dtype!r}')
        if topk is not None and (isinstance(topk, bool)
                                 or not isinstance(topk, int) or topk < 2):
            raise ValueError('teacher_cache.topk must be None or an int '
                             f'>= 2, got {topk!r}')
        self.dtype = DTYPES[dtype]
        self.topk = topk
        self.num_classes: Optional[int] = None

    def layout(self, num_classes: int) -> Dict[str, tuple]:
        """name -> (row shape, dtype) of what an entry stores."""
        if self.topk is None:
            return {'logits': ((num_classes, ), self.dtype)}
        index_dtype = torch.int16 if num_classes <= 32767 else torch.int32
        return {'values': ((self.topk, ), self.dtype),
                'indices': ((self.topk, ), index_dtype),
                'rest': ((), torch.float32)}

    def encode(self, logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The rows an entry stores for a batch of teacher logits (on the
        logits' device)."""
        logits = logits.detach()
        self._check_classes(logits.shape[1])
        if self.topk is None:
            return {'logits': logits.to(self.dtype)}
        full = logits.float()
        values, indices = full.topk(self.topk, dim=1)
        others = full.scatter(1, indices, float('-inf'))  # k < classes
        return {'values': values.to(self.dtype),
                'indices': indices.to(self.layout(self.num_classes)
                                      ['indices'][1]),
                'rest': others.logsumexp(1)}

    def decode(self, rows: Dict[str, torch.Tensor],
               device: torch.device) -> torch.Tensor:
        r"""Float32 logits on ``device`` from stored rows (the classes
        outside the top k at :math:`\rho - \log(C-k)`)."""
        if self.topk is None:
            return rows['logits'].to(device=device, dtype=torch.float32)
        values = rows['values'].to(device=device, dtype=torch.float32)
        fill = rows['rest'].to(device) - math.log(self.num_classes -
                                                  self.topk)
        out = fill[:, None].expand(len(values), self.num_classes).clone()
        return out.scatter_(1, rows['indices'].to(device).long(), values)

    def _check_classes(self, num_classes: int) -> None:
        if self.num_classes is None:
            if self.topk is not None and self.topk >= num_classes:
                raise ValueError(
                    f'teacher_cache.topk={self.topk} must be smaller than '
                    f'the number of classes ({num_classes}); remove topk to '
                    'cache all logits')
            self.num_classes = num_classes
        elif num_classes != self.num_classes:
            raise ValueError(
                f'teacher_cache: the teacher gave {num_classes} classes, '
                f'the cache holds {self.num_classes}')
