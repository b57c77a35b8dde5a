from typing import Optional, Tuple

import numpy as np
import torch
from mmengine.dist import all_reduce, broadcast, collect_results, \
    is_distributed
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from mmtolerant.utils.model import bare_model


def use_rank0_buffers(model) -> bool:
    """Give every rank rank 0's buffers (BatchNorm statistics); whether they
    were already equal on all ranks. True when not distributed."""
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


def weights_checksum(model) -> torch.Tensor:
    """A float64 sum per parameter and buffer: tells whether two moments
    saw the same weights (e.g. not EMA weights swapped in for validation)."""
    return torch.stack([
        t.detach().double().sum().cpu()
        for t in model.state_dict().values()
    ]) if len(model.state_dict()) else torch.zeros(0)


@HOOKS.register_module()
class FinalValPredictionsHook(Hook):
    """Keeps the class scores of the validation pass that ends training.

    The last validation of a run (mmengine's train loops validate after the
    final epoch or iteration) has already computed the trained model's
    softmax scores on every validation sample. When the test set is the
    validation set, the GenerationRunner takes the generation's test
    predictions from here instead of running the model over the test set a
    second time.

    Only the pass that runs once training is complete is kept (a pass after
    an earlier epoch would describe another model), with the iteration it
    ran at, so that a reader can check it describes the final weights.
    Under DDP, that pass first gives every rank rank 0's buffers: DDP keeps
    the weights equal, but each rank's BatchNorm statistics come from its
    own share of the data (mmengine does not broadcast buffers), and rank
    0's model is the one a chain exports, so the final validation (its
    metrics too) describes exactly that model.
    The weights it validated are checksummed, so that a reader can tell
    whether they are the ones it hands on (a hook such as mmengine's
    ``EMAHook`` validates other weights than it trains).
    Memory: samples x classes float32 on the CPU, per process, during the
    final validation only.
    """
    priority = 'LOW'

    def __init__(self):
        self._rows = None
        self.iteration: Optional[int] = None
        self.checksum: Optional[torch.Tensor] = None

    def before_val_epoch(self, runner) -> None:
        # The built loop only: this hook must not build a training loop
        # (and its dataloader) for a validation-only run.
        loop = getattr(runner, '_train_loop', None)
        max_iters = None if isinstance(loop, dict) or loop is None \
            else getattr(loop, 'max_iters', None)
        final = max_iters is not None and runner.iter >= max_iters
        self._rows = [] if final else None
        self.iteration = None
        self.checksum = None
        if final:
            model = bare_model(runner.model)
            use_rank0_buffers(model)
            self.checksum = weights_checksum(model)

    def after_val_iter(self, runner, batch_idx, data_batch=None,
                       outputs=None) -> None:
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

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._rows is not None:
            self.iteration = runner.iter

    def predictions(self, size: int) -> Optional[Tuple[np.ndarray,
                                                       np.ndarray]]:
        """(scores (N, C), labels (N,)) in dataset order on the main
        process, gathered from every rank; None elsewhere, or when the kept
        pass does not cover each of the ``size`` samples exactly.

        Every rank must call it (it gathers); all ranks agree on whether the
        pass was kept.
        """
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
