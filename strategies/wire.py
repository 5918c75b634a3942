"""What travels, in numpy terms only (no Flower, no torch): the ``.npy`` header a client's bytes must carry, the
packed layout string and its digest, and the byte count of an array. Shared by the strategies (which check
replies) and the library's byte report (which must not import Flower)."""

from __future__ import annotations

import functools
import hashlib
import io
import re

import numpy as np

PACKED = "packed"
LAYOUT_PREFIX = "fedtt-layout:"
_NPY_MAGIC = b"\x93NUMPY"


#: the header numpy writes: a plain dtype string, C or Fortran order, a shape of at most 8 dimensions, padding
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z][0-9]{0,3})', 'fortran_order': (False|True), "
    rb"'shape': \((\d{1,12}(?:, \d{1,12}){1,7}|\d{1,12},|)\), \} *\n")


def npy_header(data: bytes) -> tuple[str, tuple[int, ...], int, bool]:
    """``(dtype string, shape, offset of the values, fortran_order)`` from the ``.npy`` header numpy writes
    (version 1.0, at most 65,535 bytes); ValueError for anything else. Strict on purpose: it reads bytes a client
    sent, and it parses nothing with numpy (``np.dtype`` of a crafted string can raise SyntaxError or take
    seconds). It is also what lets :func:`strategies.packing.as_numpy` skip ``np.load``'s ``ast.literal_eval``
    per array (70 % of the server's aggregation time for TT cores)."""
    if data[:8] != _NPY_MAGIC + b"\x01\x00" or len(data) < 10:
        raise ValueError("not a .npy 1.0 buffer (bad magic or version)")
    end = 10 + int.from_bytes(data[8:10], "little")
    match = _NPY_HEADER.fullmatch(data[10:end]) if end <= len(data) else None
    if match is None:
        raise ValueError("malformed .npy header")
    shape = tuple(int(x) for x in match[3].split(b",") if x.strip())
    return match[1].decode("ascii"), shape, end, match[2] == b"True"


@functools.lru_cache(maxsize=4096)
def canonical_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The ``.npy`` header numpy writes for a C-order array of this shape and dtype."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": tuple(shape)})
    return buffer.getvalue()


def format_layout(entries: list[tuple[str, tuple[int, ...]]]) -> str:
    """``name:shape;...`` (shapes as ``3x4x3``): what travels with a packed record."""
    return ";".join(f"{n}:{'x'.join(map(str, s))}" for n, s in entries)


DIGEST_LENGTH = 16


def layout_digest(layout: str, server_round: int) -> str:
    """What a packed reply carries to prove which tensors it holds, in which order, for which round
    (16 hex digits: the uplink stays free of the layout itself)."""
    return hashlib.sha256(f"{server_round}|{layout}".encode()).hexdigest()[:DIGEST_LENGTH]


def digest_bytes(arrays_key: str = "arrays") -> int:
    """What the layout digest adds to a packed reply, counted as ``record_bytes`` counts layouts."""
    return len(LAYOUT_PREFIX + arrays_key) + DIGEST_LENGTH


def parse_layout(layout: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for item in filter(None, layout.split(";")):
        name, sep, shape = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"bad layout entry {item!r} (expected name:shape)")
        out.append((name, tuple(int(x) for x in shape.split("x")) if shape else ()))
    return out


def npy_size(shape: tuple[int, ...], dtype: str = "float32") -> int:
    """Bytes of an array of this shape and dtype saved as ``.npy`` (what a Flower ``Array`` carries)."""
    shape = tuple(int(x) for x in shape)
    return len(canonical_header(shape, dtype)) + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
