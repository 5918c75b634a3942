"""Flower strategies for tensor-train adapters (numpy and Flower only; no torch)."""

from .fedtt import DEFAULT_INCLUDE, PLAN_KEY, SYNC_KEY, FedAlternating, FedTT, FedTTPlus, record_bytes
from .protocol import CACHE_KEY, receive_global, round_trainable
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
    "CyclicSchedule",
    "FedAlternating",
    "FedTT",
    "FedTTPlus",
    "FixedSchedule",
    "RandomSchedule",
    "Schedule",
    "decode_plan",
    "encode_plan",
    "make_schedule",
    "receive_global",
    "round_trainable",
    "record_bytes",
    "trainable_names",
]
