from .chain_progress_hook import ChainProgressHook, EpochSeedHook
from .export_model_hook import ExportModelHook
from .final_val_predictions_hook import FinalValPredictionsHook
from .teacher_cache_logger_hook import TeacherCacheLoggerHook

__all__ = [
    'ExportModelHook', 'ChainProgressHook', 'EpochSeedHook',
    'FinalValPredictionsHook', 'TeacherCacheLoggerHook'
]
