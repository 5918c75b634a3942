"""fedtt-flwr: federated fine-tuning of Hugging Face models with tensor-train adapters (FedTT, FedTT+).

The public names load on first use, so that light modules (the ClientApp's hand-off to a training worker,
the CLI's help) do not pay for importing torch."""

from importlib import import_module

_EXPORTS = {
    "TTAdapter": "adapters",
    "add_tt_adapters": "adapters",
    "count_parameters": "adapters",
    "get_adapter_state": "adapters",
    "set_adapter_state": "adapters",
    "tt_layers": "adapters",
    "TTAdapterConfig": "config",
    "load_model": "models",
    "pick_device": "models",
    "TTLinear": "tt",
    "tt_num_params": "tt",
    "tt_shape": "tt",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
