from .export_model_hook import ExportModelHook

__all__ = ['ExportModelHook']
