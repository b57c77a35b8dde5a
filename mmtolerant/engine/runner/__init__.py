from .chain_log_processor import ChainLogProcessor
from .generation_runner import GenerationRunner
from .generation_settings import GenerationSettings
from .resumable_epoch_loop import ResumableEpochBasedTrainLoop

__all__ = [
    'ChainLogProcessor', 'GenerationRunner', 'GenerationSettings',
    'ResumableEpochBasedTrainLoop'
]
