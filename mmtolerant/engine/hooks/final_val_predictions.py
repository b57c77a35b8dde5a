"""The class scores of the validation pass that ends training."""
from typing import Optional, Tuple

import numpy as np
import torch
from mmengine.dist import collect_results

from mmtolerant.utils.distributed import use_rank0_buffers
from mmtolerant.utils.model import bare_model


def weights_checksum(model) -> torch.Tensor:
    """A float64 sum per parameter and buffer: tells whether two moments
    saw the same weights (e.g. not EMA weights swapped in for validation)."""
    state = model.state_dict()
    return torch.stack([t.detach().double().sum().cpu()
                        for t in state.values()]) if state else torch.zeros(0)


class FinalValPredictions:
    """Keeps the softmax scores of the validation pass that ends training.

    MMEngine's train loops validate after the final epoch or iteration:
    that pass has already computed the trained model's scores on every
    validation sample, so a chain whose test set is its validation set
    need not predict it a second time. Only the pass that runs once
    training is complete is kept (an earlier one describes another model),
    with the iteration it ran at and a checksum of the weights it
    validated (a hook such as mmengine's ``EMAHook`` validates other
    weights than it trains), so that :meth:`describes` can tell whether it
    describes the weights handed on. Under DDP, that pass first gives every
    rank rank 0's buffers (each rank's BatchNorm statistics come from its
    own share of the data; rank 0's model is the one a chain exports), so
    the final validation, its metrics too, describes exactly that model.
    Memory: samples x classes float32 on the CPU, per process, during the
    final validation only.

    Driven by :class:`GenerationFinishHook`'s validation hook points.
    """

    def __init__(self):
        self.training = False
        self._rows = None
        self._iteration: Optional[int] = None
        self._checksum: Optional[torch.Tensor] = None

    def start(self, runner) -> None:
        max_iters = getattr(runner.train_loop, 'max_iters', None) \
            if self.training else None
        final = max_iters is not None and runner.iter >= max_iters
        self._rows = [] if final else None
        self._iteration = self._checksum = None
        if final:
            model = bare_model(runner.model)
            use_rank0_buffers(model)
            self._checksum = weights_checksum(model)

    def add(self, outputs) -> None:
        if self._rows is None:
            return
        for sample in outputs or ():
            index = sample.metainfo.get('sample_idx')
            score = sample.get('pred_score')
            label = sample.get('gt_label')
            if index is None or score is None or label is None:
                self._rows = None  # cannot be ordered or scored: predict
                return
            # clone: a row of the batch's tensor would carry (and pickle,
            # when gathered) the whole batch's storage.
            self._rows.append((int(index),
                               score.detach().float().cpu().clone(),
                               int(label.reshape(-1)[0])))

    def finish(self, runner) -> None:
        if self._rows is not None:
            self._iteration = runner.iter

    def describes(self, runner, model) -> bool:
        """Whether the kept pass validated ``model``'s current weights at
        the run's current iteration."""
        return self._iteration == runner.iter \
            and self._checksum is not None \
            and torch.equal(self._checksum, weights_checksum(model))

    def gather(self, size: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(scores (N, C), labels (N,)) in dataset order on the main
        process, gathered from every rank; None elsewhere, or when the kept
        pass does not cover each of the ``size`` samples exactly. Every
        rank must call it (it gathers)."""
        rows = collect_results(self._rows or [], size * 4, device='cpu')
        if rows is None:
            return None
        by_index = {}
        for index, score, label in rows:  # samplers may pad with repeats
            by_index.setdefault(index, (score, label))
        if sorted(by_index) != list(range(size)):
            return None
        scores = torch.stack([by_index[i][0] for i in range(size)])
        labels = np.array([by_index[i][1] for i in range(size)],
                          dtype=np.int64)
        return scores.numpy(), labels
