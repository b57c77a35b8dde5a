from .chain_progress_hook import ChainProgressHook, EpochSeedHook
from .export_model_hook import ExportModelHook

__all__ = ['ExportModelHook', 'ChainProgressHook', 'EpochSeedHook']
