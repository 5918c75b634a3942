"""One array per message instead of one per tensor: the same numbers in fewer bytes.

Flower serializes every array with a 128-byte ``.npy`` header and its name. A TT adapter travels as
many small cores (MiniLM: 122 tensors, 16,370 values), so a quarter of its message is that overhead.
``pack`` concatenates a record's tensors into one flat array and describes them in a compact layout
string (``name:shape;...``) that travels in the message's ConfigRecord; ``unpack`` rebuilds the
record. Replies come back packed in the order they were sent, so the uplink carries no layout at all.
Aggregation is unchanged: strategies see the unpacked, named tensors. Pure numpy/Flower.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

PACKED = "packed"
LAYOUT_PREFIX = "fedtt-layout:"
_NPY_MAGIC = b"\x93NUMPY"


def as_numpy(array: Array) -> np.ndarray:
    """The values of a Flower ``Array``, read-only, without numpy's ``.npy`` header parser.

    ``Array.numpy()`` is ``np.load``, which parses each header with ``ast.literal_eval``: for TT cores (many
    tiny tensors) that parser was 70 % of the server's aggregation time. This reads the header's dtype and
    the array's shape and views the bytes in place; anything but a plain C-order ``.npy`` goes the slow way."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:6] == _NPY_MAGIC and data[6] in (1, 2, 3):
        size_bytes = 2 if data[6] == 1 else 4
        start = 8 + size_bytes
        end = start + int.from_bytes(data[8:start], "little")
        header = data[start:end]
        descr = header.partition(b"'descr': '")[2].partition(b"'")[0]
        if descr and b"'fortran_order': False" in header:
            shape = tuple(array.shape)
            count = int(np.prod(shape, dtype=np.int64))
            return np.frombuffer(data, dtype=np.dtype(descr.decode()), count=count, offset=end).reshape(shape)
    return array.numpy()


def pack(record: ArrayRecord) -> tuple[ArrayRecord, str]:
    """``(record holding one flat array, layout)``; every tensor must share one dtype."""
    arrays = {n: as_numpy(record[n]) for n in record}
    dtypes = {str(a.dtype) for a in arrays.values()}
    if len(dtypes) > 1:
        raise ValueError(f"pack: tensors of one record must share a dtype, got {sorted(dtypes)}")
    layout = ";".join(f"{n}:{'x'.join(map(str, a.shape))}" for n, a in arrays.items())
    flat = np.concatenate([a.ravel() for a in arrays.values()]) if arrays else np.zeros(0, dtype=np.float32)
    return ArrayRecord({PACKED: Array(np.ascontiguousarray(flat))}), layout


def parse_layout(layout: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for item in filter(None, layout.split(";")):
        name, sep, shape = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"bad layout entry {item!r} (expected name:shape)")
        out.append((name, tuple(int(x) for x in shape.split("x")) if shape else ()))
    return out


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
