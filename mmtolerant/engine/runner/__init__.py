from .generation_runner import GenerationRunner
from .generation_settings import GenerationSettings

__all__ = ['GenerationRunner', 'GenerationSettings']
