"""The dense (Houlsby) adapter baseline: the same placement and bottleneck as the TT adapters, plain matrices."""

from __future__ import annotations

from .registry import Method
from .tt_adapter import inject

METHODS = (
    Method("adapter", "dense", "a dense adapter at the TT adapters' placement and bottleneck, and the head",
           inject, lambda shapes, _: shapes.dense, tt_config=True),
)
