"""One array per message instead of one per tensor: the same numbers in fewer bytes.

Flower serializes every array with a 128-byte ``.npy`` header and its name. A TT adapter travels as
many small cores (MiniLM: 122 tensors, 16,370 values), so a quarter of its message is that overhead.
``pack`` concatenates a record's tensors into one flat array and describes them in a compact layout
string (``name:shape;...``) that travels in the message's ConfigRecord; ``unpack`` rebuilds the
record. Replies come back packed in the order they were sent, so the uplink carries no layout, only a
16-digit digest of it and the round (``layout_digest``) that lets the server reject a reply in another order.
Aggregation is unchanged: strategies see the unpacked, named tensors. Pure numpy/Flower.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

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


def pack(record: ArrayRecord) -> tuple[ArrayRecord, str]:
    """``(record holding one flat array, layout)``; every tensor must share one dtype."""
    arrays = {n: as_numpy(record[n]) for n in record}
    dtypes = {str(a.dtype) for a in arrays.values()}
    if len(dtypes) > 1:
        raise ValueError(f"pack: tensors of one record must share a dtype, got {sorted(dtypes)}")
    layout = format_layout([(n, a.shape) for n, a in arrays.items()])
    flat = np.concatenate([a.ravel() for a in arrays.values()]) if arrays else np.zeros(0, dtype=np.float32)
    return ArrayRecord({PACKED: Array(np.ascontiguousarray(flat))}), layout


def unpack(record: ArrayRecord, layout: str | list[tuple[str, tuple[int, ...]]]) -> ArrayRecord:
    """The named record back from a packed one; a size that does not match the layout is an error."""
    if list(record.keys()) != [PACKED]:
        raise ValueError(f"expected one array named {PACKED!r}, got {list(record.keys())[:3]}")
    entries = parse_layout(layout) if isinstance(layout, str) else layout
    flat = as_numpy(record[PACKED])
    sizes = [int(np.prod(s)) for _, s in entries]
    if flat.ndim != 1 or flat.size != sum(sizes):
        raise ValueError(f"packed array has {flat.size} values, the layout needs {sum(sizes)}")
    parts = np.split(flat, np.cumsum(sizes)[:-1]) if entries else []
    return ArrayRecord({n: Array(np.ascontiguousarray(p.reshape(s))) for (n, s), p in zip(entries, parts, strict=True)})
