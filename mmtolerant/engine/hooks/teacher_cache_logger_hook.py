from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmpretrain.registry import HOOKS

from mmtolerant.utils.model import bare_model


@HOOKS.register_module()
class TeacherCacheLoggerHook(Hook):
    """Logs after each training epoch what a student's teacher cache did:
    entries filled, teacher forwards of the epoch (samples), batches
    replayed, memory. The GenerationRunner adds it to every student with
    ``generations.teacher_cache``; a standalone ``DistillImageClassifier``
    run can list it in ``custom_hooks``. Does nothing without a cache."""
    priority = 'LOW'

    def __init__(self):
        self._seen = (0, 0, 0)

    @staticmethod
    def _cache(runner):
        return getattr(bare_model(runner.model), 'teacher_cache', None)

    def after_train_epoch(self, runner) -> None:
        cache = self._cache(runner)
        if cache is None:
            return
        computed, hits, misses = cache.computed, cache.hits, cache.misses
        new = (computed - self._seen[0], hits - self._seen[1],
               misses - self._seen[2])
        self._seen = (computed, hits, misses)
        views = '' if cache.views is None else f' ({cache.views} views)'
        print_log(
            f'[mmtolerant] teacher cache{views}, epoch {runner.epoch + 1}: the '
            f'teacher filled {new[0]} entries (job total {computed}, '
            f'{len(cache)} cached), {new[1]} of {new[1] + new[2]} batches '
            f'replayed, {cache.nbytes / 2**20:.1f} MiB', logger='current')
