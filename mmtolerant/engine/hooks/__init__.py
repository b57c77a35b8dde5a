from .chain_progress_hook import ChainProgressHook
from .epoch_seed_hook import EpochSeedHook
from .export_model_hook import ExportModelHook
from .generation_finish_hook import GenerationFinishHook
from .preemption_hook import PreemptionHook
from .snapshot_generations_hook import SnapshotGenerationsHook
from .teacher_cache_logger_hook import TeacherCacheLoggerHook

__all__ = [
    'ChainProgressHook', 'EpochSeedHook', 'ExportModelHook',
    'GenerationFinishHook', 'PreemptionHook', 'SnapshotGenerationsHook',
    'TeacherCacheLoggerHook'
]
