"""Fewer bytes per value on the wire: float16, bfloat16, or 8-bit integers with one float32 scale per block.

A packed record (:mod:`strategies.packing`) is one flat float32 array; :class:`WireFormat` turns it into what
travels and back. Pure numpy:

- ``float16``: IEEE half (2 bytes; values above 65,504 cannot travel, an error says so);
- ``bfloat16``: float32's upper 16 bits, rounded to nearest even (2 bytes; float32's range, 8 bits of mantissa),
  carried as ``uint16`` since numpy has no bfloat16;
- ``int8``: per block of ``block`` values a scale ``max|x| / 127`` (float32) and the values ``round(x / scale)``
  (1 byte each, plus 4 bytes per block).

The server keeps its global state in float32 and sends absolute values down (a node may be stateless). A node
replies with its *update* in the lossy format (trained minus what it received, decoded) and the server adds it
to the float32 values it sent, so the downlink's rounding never enters the global model and an update's rounding
is as small as the update. With ``float32`` (the default) nothing changes: absolute values, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .wire import PACKED

#: the ConfigRecord entry that announces a message's wire format (absent: float32)
PRECISION_KEY = "fedtt-precision"
#: the ConfigRecord entry (False) with which a server tells nodes to keep no error-feedback residual: it re-draws
#: (FLoRA) or re-gauges by TT-SVD (rebuilt matrices, per-node ranks) what it sends, so last round's residual of a
#: tensor would be added to a different one
FEEDBACK_KEY = "fedtt-wire-feedback"
#: the second array of an int8 record
SCALES = "scales"
PRECISIONS = ("float32", "float16", "bfloat16", "int8")
_VALUE_DTYPE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int8": np.int8}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class WireFormat:
    """How a packed record's values travel; ``block`` (int8 only): values per scale."""

    precision: str = "float32"
    block: int = 128

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"wire precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.block, int) or isinstance(self.block, bool) or not 1 <= self.block <= 1 << 20:
            raise ValueError(f"wire block must be an integer in 1..{1 << 20}, got {self.block!r}")

    @property
    def lossy(self) -> bool:
        return self.precision != "float32"

    @property
    def value_dtype(self) -> np.dtype:
        return np.dtype(_VALUE_DTYPE[self.precision])

    @property
    def tag(self) -> str:
        """What the ConfigRecord announces: ``float16``, ``bfloat16`` or ``int8:<block>``."""
        return f"int8:{self.block}" if self.precision == "int8" else self.precision

    @classmethod
    def parse(cls, tag: str) -> WireFormat:
        """The format a message announces (:attr:`tag`); ValueError for anything else."""
        name, _, block = str(tag).partition(":")
        if name == "int8":
            if not block.isdigit():
                raise ValueError(f"wire format {tag!r}: int8 needs its block size (int8:<block>)")
            return cls(name, int(block))
        if block:
            raise ValueError(f"wire format {tag!r}: only int8 takes a block size")
        return cls(name)

    def blocks(self, size: int) -> int:
        return -(-size // self.block) if self.precision == "int8" else 0

    def spec(self, size: int) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """``(name, shape, dtype)`` of the arrays a packed record of ``size`` values travels as."""
        out = [(PACKED, (size,), self.value_dtype)]
        if self.precision == "int8":
            out.append((SCALES, (self.blocks(size),), np.dtype(np.float32)))
        return out

    def encode(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """``flat`` (float32 values) as the arrays that travel; ValueError where float16 cannot carry a value."""
        flat = np.ascontiguousarray(flat, dtype=np.float32).ravel()
        if self.precision == "float32":
            return {PACKED: flat}
        if self.precision == "float16":
            if flat.size and float(np.abs(flat).max()) > _FLOAT16_MAX:
                raise ValueError(f"wire precision float16 cannot carry {float(np.abs(flat).max()):.3g} (its largest "
                                 f"value is {_FLOAT16_MAX:g}); use bfloat16")
            return {PACKED: flat.astype(np.float16)}
        if self.precision == "bfloat16":
            bits = flat.view(np.uint32)
            rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
            # a NaN's low bits can carry the rounding add past 32 bits (to +0): NaN stays a (quiet) NaN
            return {PACKED: np.where(np.isnan(flat), np.uint16(0x7FC0), rounded).astype(np.uint16)}
        blocks = self.blocks(flat.size)
        padded = np.zeros(blocks * self.block, dtype=np.float32)
        padded[: flat.size] = flat
        padded = padded.reshape(blocks, self.block)
        scales = (np.abs(padded).max(axis=1) / 127.0).astype(np.float32)
        safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
        with np.errstate(invalid="ignore"):  # a block with a NaN: its scale is NaN, which the server rejects
            q = np.clip(np.rint(padded / safe[:, None]), -127, 127).astype(np.int8).ravel()[: flat.size]
        return {PACKED: q, SCALES: scales}

    def decode(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """The float32 values of what :meth:`encode` made (arrays already checked against :meth:`spec`)."""
        values = np.asarray(arrays[PACKED])
        if self.precision == "bfloat16":
            return (values.astype(np.uint32) << np.uint32(16)).view(np.float32)
        if self.precision == "int8":
            scales = np.repeat(np.asarray(arrays[SCALES], dtype=np.float32), self.block)[: values.size]
            return values.astype(np.float32) * scales
        return values.astype(np.float32)

    def round_trip(self, flat: np.ndarray) -> np.ndarray:
        """What the other side reads of ``flat``."""
        return self.decode(self.encode(flat))

    @property
    def max_value(self) -> float:
        """The largest magnitude the format carries (float16: 65,504; the others: float32's range)."""
        return _FLOAT16_MAX if self.precision == "float16" else float(np.finfo(np.float32).max)

    def carries(self, values: np.ndarray) -> bool:
        """Whether ``values`` (finite) fit the format's range."""
        return not values.size or max(float(values.max()), -float(values.min())) <= self.max_value

    def bytes_per_value(self) -> float:
        """Payload bytes per value (int8: the scales included, spread over a full block)."""
        return self.value_dtype.itemsize + (4 / self.block if self.precision == "int8" else 0.0)


FLOAT32 = WireFormat()
