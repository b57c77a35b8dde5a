from .checkpoint import (CheckpointLoadError, extract_state_dict,
                         register_safe_loader, safe_torch_load)
from .fileio import register_atomic_backend
from .model import bare_model

__all__ = [
    'CheckpointLoadError', 'extract_state_dict', 'register_safe_loader',
    'register_atomic_backend', 'safe_torch_load', 'bare_model'
]
