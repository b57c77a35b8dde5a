from mmengine.logging import print_log
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.runner import EpochBasedTrainLoop
from mmpretrain.registry import LOOPS


@MMENGINE_LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """MMEngine's ``EpochBasedTrainLoop``, resumable in the middle of an
    epoch.

    MMEngine's loop trains every epoch from its first batch, also the epoch
    a mid-epoch checkpoint stopped in (``PreemptionHook``'s, saved when a
    cluster signals a time limit). This loop continues that epoch at the
    next batch: it draws the epoch's batches in the same order (the
    sampler's seed and epoch) and passes over the first ``b`` untrained,
    where ``b = iter - epoch x batches per epoch`` as the checkpoint
    records. The skipped batches are loaded (not trained): the data
    pipeline draws the random numbers it drew before, so with
    ``EpochSeedHook`` (the chain adds it) the rest of the epoch sees the
    images an uninterrupted run sees. The cost is one pass of data loading
    over the trained part of the epoch.

    Takes the arguments of ``EpochBasedTrainLoop`` (``max_epochs``,
    ``val_begin``, ``val_interval``, ``dynamic_intervals``); use it as
    ``train_cfg = dict(type='ResumableEpochBasedTrainLoop',
    max_epochs=...)``. A chain uses it in every generation whose
    ``train_cfg`` is MMEngine's epoch loop.
    """
    resumes_mid_epoch = True

    def run_epoch(self) -> None:
        """Iterate one epoch (from the batch after the last one trained)."""
        batches = len(self.dataloader)
        done = self._iter - self._epoch * batches
        if not 0 < done <= batches:
            return super().run_epoch()
        # Stopped after batch `done`; after the last one the epoch only
        # ends (checkpoint, validation, schedulers), it is not trained.
        print_log(
            f'[resume] epoch {self._epoch + 1}: its first {done} of '
            f'{batches} batches were trained before the stop; ' +
            (f'continuing at batch {done + 1}'
             if done < batches else 'ending the epoch'), logger='current')
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        if done < batches:
            for idx, data_batch in enumerate(self.dataloader):
                if idx >= done:
                    self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


# Found by mmpretrain-scoped configs too.
LOOPS.register_module(module=ResumableEpochBasedTrainLoop)
