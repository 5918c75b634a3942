"""fedtt-flwr: federated fine-tuning of Hugging Face models with tensor-train adapters (FedTT, FedTT+)."""

from .adapters import (
    TTAdapter,
    add_tt_adapters,
    count_parameters,
    get_adapter_state,
    set_adapter_state,
    tt_layers,
)
from .config import TTAdapterConfig
from .models import load_model, pick_device
from .tt import TTLinear, tt_num_params, tt_shape

__all__ = [
    "TTAdapter",
    "TTAdapterConfig",
    "TTLinear",
    "add_tt_adapters",
    "count_parameters",
    "get_adapter_state",
    "load_model",
    "pick_device",
    "set_adapter_state",
    "tt_layers",
    "tt_num_params",
    "tt_shape",
]
