from .checkpoint import (CheckpointLoadError, extract_state_dict,
                         register_safe_loader, safe_torch_load)
from .compat import apply_compat_fixes
from .model import bare_model

__all__ = [
    'CheckpointLoadError', 'extract_state_dict', 'register_safe_loader',
    'safe_torch_load', 'apply_compat_fixes', 'bare_model'
]
