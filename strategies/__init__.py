"""Flower strategies for tensor-train adapters (numpy and Flower only; no torch)."""

from .fedavg import FastFedAvg, weighted_average
from .fedtt import DEFAULT_INCLUDE, PLAN_KEY, REPLY_KEY, SYNC_KEY, FedAlternating, FedTT, FedTTPlus, record_bytes
from .packing import as_numpy, layout_digest, pack, unpack
from .protocol import CACHE_KEY, named_arrays, receive_global, reply_arrays, reply_content, round_trainable
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
    "REPLY_KEY",
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
    "layout_digest",
    "make_schedule",
    "named_arrays",
    "pack",
    "receive_global",
    "round_trainable",
    "record_bytes",
    "reply_arrays",
    "reply_content",
    "trainable_names",
    "weighted_average",
    "unpack",
]
