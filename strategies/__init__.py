"""Flower strategies for tensor-train adapters (numpy and Flower only; no torch)."""

from .fedavg import FastFedAvg, weighted_average
from .fedtt import DEFAULT_INCLUDE, PLAN_KEY, SYNC_KEY, FedAlternating, FedTT, FedTTPlus, record_bytes
from .packing import as_numpy, pack, unpack
from .protocol import CACHE_KEY, named_arrays, receive_global, reply_arrays, round_trainable
from .schedules import (
    AllSchedule,
    CyclicSchedule,
    FixedSchedule,
    RandomSchedule,
    Schedule,
    decode_plan,
    encode_plan,
    make_schedule,
    trainable_names,
)

__all__ = [
    "CACHE_KEY",
    "DEFAULT_INCLUDE",
    "PLAN_KEY",
    "SYNC_KEY",
    "AllSchedule",
    "FastFedAvg",
    "CyclicSchedule",
    "FedAlternating",
    "FedTT",
    "FedTTPlus",
    "FixedSchedule",
    "RandomSchedule",
    "Schedule",
    "as_numpy",
    "decode_plan",
    "encode_plan",
    "make_schedule",
    "named_arrays",
    "pack",
    "receive_global",
    "round_trainable",
    "record_bytes",
    "reply_arrays",
    "trainable_names",
    "weighted_average",
    "unpack",
]
