"""Flower strategies for tensor-train adapters (numpy and Flower only; no torch).

Names are loaded on first use (PEP 562), so ``strategies.schedules`` and ``strategies.wire`` (pure Python and
numpy) can be imported by the library without importing Flower.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "fedavg": ("FastFedAvg", "weighted_average"),
    "fedtt": ("DEFAULT_INCLUDE", "PLAN_KEY", "REPLY_KEY", "SYNC_KEY", "FedAlternating", "FedTT", "FedTTPlus",
              "record_bytes"),
    "hetero": ("FedTTHetero",),
    "residual": ("FedLoRAResidual",),
    "packing": ("as_numpy", "pack", "unpack"),
    "precision": ("WireFormat",),
    "wire": ("layout_digest",),
    "protocol": ("CACHE_KEY", "named_arrays", "receive_global", "reply_arrays", "reply_content", "round_trainable",
                 "wire_format"),
    "schedules": ("AllSchedule", "CyclicSchedule", "FixedSchedule", "RandomSchedule", "Schedule", "decode_plan",
                  "encode_plan", "make_schedule", "trainable_names"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'strategies' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
