"""One array per message instead of one per tensor: the same numbers in fewer bytes.

Flower serializes every array with a 128-byte ``.npy`` header and its name. A TT adapter travels as
many small cores (MiniLM: 122 tensors, 16,370 values), so a quarter of its message is that overhead.
``pack`` concatenates a record's tensors into one flat array and describes them in a compact layout
string (``name:shape;...``) that travels in the message's ConfigRecord; ``unpack`` rebuilds the
record. Replies come back packed in the order they were sent, so the uplink carries no layout, only a
16-digit digest of it and the round (``layout_digest``) that lets the server reject a reply in another order.
Aggregation is unchanged: strategies see the unpacked, named tensors. A lossy :class:`~strategies.precision.
WireFormat` (float16, bfloat16, int8) encodes the flat array on the way out and decodes it on the way in.
Pure numpy/Flower.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from .precision import FLOAT32, WireFormat
from .wire import PACKED, format_layout, npy_header, parse_layout


def as_numpy(array: Array) -> np.ndarray:
    """The values of a Flower ``Array``, read-only, without numpy's ``.npy`` header parser (see
    :func:`npy_header`); anything but a plain C-order ``.npy`` of plain values goes the slow way. For arrays the
    server made or checked (:mod:`strategies.validation`), not for a client's raw bytes."""
    if array.stype == "numpy.ndarray":
        try:
            descr, shape, offset, fortran = npy_header(array.data)
            dtype = np.dtype(descr)
            if not fortran and not dtype.hasobject:
                count = int(np.prod(shape, dtype=np.int64))
                return np.frombuffer(array.data, dtype=dtype, count=count, offset=offset).reshape(shape)
        except (ValueError, TypeError):
            pass
    return array.numpy()


def flatten(record: ArrayRecord) -> tuple[np.ndarray, str]:
    """``(the record's values in one flat array, layout)``; every tensor must share one dtype."""
    arrays = {n: as_numpy(record[n]) for n in record}
    dtypes = {str(a.dtype) for a in arrays.values()}
    if len(dtypes) > 1:
        raise ValueError(f"pack: tensors of one record must share a dtype, got {sorted(dtypes)}")
    layout = format_layout([(n, a.shape) for n, a in arrays.items()])
    flat = np.concatenate([a.ravel() for a in arrays.values()]) if arrays else np.zeros(0, dtype=np.float32)
    return np.ascontiguousarray(flat), layout


def encoded(flat: np.ndarray, wire: WireFormat = FLOAT32) -> ArrayRecord:
    """The record that carries ``flat`` in ``wire``'s format (float32: the array itself, whatever its dtype)."""
    if not wire.lossy:
        return ArrayRecord({PACKED: Array(np.ascontiguousarray(flat))})
    return ArrayRecord({n: Array(a) for n, a in wire.encode(flat).items()})


def pack(record: ArrayRecord, wire: WireFormat = FLOAT32) -> tuple[ArrayRecord, str]:
    """``(record holding one flat array (int8: and its scales), layout)``; every tensor must share one dtype."""
    flat, layout = flatten(record)
    return encoded(flat, wire), layout


def read_packed(record: ArrayRecord, wire: WireFormat = FLOAT32) -> np.ndarray:
    """The flat values of a packed record (decoded from ``wire``'s format)."""
    names = [n for n, _, _ in wire.spec(0)]
    if list(record.keys()) != names:
        want = f"one array named {PACKED!r}" if len(names) == 1 else f"the arrays {names}"
        raise ValueError(f"expected {want} (a packed {wire.tag} record), got {list(record.keys())[:3]}")
    if not wire.lossy:
        return as_numpy(record[PACKED])
    return wire.decode({n: as_numpy(record[n]) for n in names})


def split(flat: np.ndarray, layout: str | list[tuple[str, tuple[int, ...]]]) -> ArrayRecord:
    """The named record of ``flat`` by ``layout``; a size that does not match the layout is an error."""
    entries = parse_layout(layout) if isinstance(layout, str) else layout
    sizes = [int(np.prod(s)) for _, s in entries]
    if flat.ndim != 1 or flat.size != sum(sizes):
        raise ValueError(f"packed array has {flat.size} values, the layout needs {sum(sizes)}")
    parts = np.split(flat, np.cumsum(sizes)[:-1]) if entries else []
    return ArrayRecord({n: Array(np.ascontiguousarray(p.reshape(s))) for (n, s), p in zip(entries, parts, strict=True)})


def unpack(record: ArrayRecord, layout: str | list[tuple[str, tuple[int, ...]]],
           wire: WireFormat = FLOAT32) -> ArrayRecord:
    """The named record back from a packed one; a size that does not match the layout is an error."""
    return split(read_packed(record, wire), layout)
