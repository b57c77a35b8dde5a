from mmengine.hooks import DistSamplerSeedHook, Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from mmpretrain.registry import HOOKS

from mmtolerant.datasets import (AugmentationViewSampler,
                                 check_replayable_dataset, innermost_dataset)
from mmtolerant.utils.model import bare_model


@HOOKS.register_module()
class TeacherCacheLoggerHook(Hook):
    """Logs after each training epoch what a student's teacher cache did:
    entries the teacher filled (this epoch, the job's total, cached),
    batches replayed, memory (and how many local ranks share it). Before
    training it reserves the cache's memory for the training set (samples
    x views entries: the whole size up front, so that a cache in shared
    memory is made once, not regrown), refuses a training set that draws a
    sample differently each time (without views) and views > 1 in an
    epoch-based run without ``DistSamplerSeedHook``. The GenerationRunner
    adds it to every student with ``generations.teacher_cache``; a
    standalone ``DistillImageClassifier`` run can list it in
    ``custom_hooks``. Does nothing without a cache."""
    priority = 'LOW'

    def __init__(self):
        self._seen = (0, 0, 0)

    @staticmethod
    def _cache(runner):
        return getattr(bare_model(runner.model), 'teacher_cache', None)

    def before_train(self, runner) -> None:
        """Reserve the cache's memory for the whole training set (and its
        views), and refuse views that would never change."""
        cache = self._cache(runner)
        if cache is None:
            return
        loader = runner.train_dataloader
        # Entries are keyed by sample_idx, which wrappers that repeat or
        # re-weight samples (RepeatDataset, ClassBalancedDataset,
        # AugmentationViews) take from the dataset they wrap.
        cache.reserve(
            len(innermost_dataset(loader.dataset)) * (cache.views or 1))
        if cache.views is None:
            check_replayable_dataset(loader.dataset)
        sampler = getattr(loader, 'sampler', None)
        # An epoch loop tells the sampler its epoch only through this hook
        # (an iteration loop's infinite iterator calls set_epoch itself).
        if cache.views is not None and cache.views > 1 and \
                isinstance(runner.train_loop, EpochBasedTrainLoop) and \
                isinstance(sampler, AugmentationViewSampler) and not any(
                    isinstance(h, DistSamplerSeedHook) for h in runner.hooks):
            raise ValueError(
                f'teacher_cache.views={cache.views} needs '
                "default_hooks.sampler_seed=dict(type='DistSamplerSeedHook')"
                ': it tells the sampler the epoch, and so the view; without '
                'it every epoch would show view 0')

    def after_train_epoch(self, runner) -> None:
        cache = self._cache(runner)
        if cache is None:
            return
        computed, hits, misses = cache.computed, cache.hits, cache.misses
        if computed < self._seen[0]:  # cleared for a new teacher
            self._seen = (0, ) + self._seen[1:]
        new = (computed - self._seen[0], hits - self._seen[1],
               misses - self._seen[2])
        self._seen = (computed, hits, misses)
        views = '' if cache.views is None else f' ({cache.views} views)'
        where = '' if cache.shared_by == 1 else (
            f' (one copy for the {cache.shared_by} ranks of this node)')
        print_log(
            f'[mmtolerant] teacher cache{views}, epoch {runner.epoch + 1}: '
            f'the teacher filled {new[0]} entries (job total {computed}, '
            f'{len(cache)} cached), {new[1]} of {new[1] + new[2]} batches '
            f'replayed, {cache.nbytes / 2**20:.1f} MiB{where}',
            logger='current')
