from torch import nn


def bare_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP/FSDP wrapper (MMEngine's ``is_model_wrapper``),
    or the model itself."""
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model
