"""Replies checked at the edge, before any inner strategy sees them.

Everything in a reply was written by a client: the record structure, each ``Array``'s metadata and its raw
``.npy`` bytes, the metric values. Flower's strategies trust all of it (an extra metric key or a second
record ends the ServerApp with ``InconsistentMessageReplies``; bytes whose header disagrees with the metadata
raise inside numpy). :func:`clean_train_reply` and :func:`clean_evaluate_reply` accept a reply only if it is
exactly what the round asked for, and rebuild its content in the canonical form (one ArrayRecord of
verified tensors, one MetricRecord of finite scalars) so nothing else reaches the inner strategy.
Pure numpy/Flower: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from .wire import canonical_header, npy_header

METRICS_KEY = "metrics"
#: the default ceiling on a reply's averaging weight (its claimed example count)
MAX_EXAMPLES = 1_000_000
#: the default bound on a reply's values: adapter factors, gains and heads are O(1); values near float32's
#: range would overflow a server optimizer's squares (FedAdam's v_t) and freeze that tensor for good
MAX_ABS = 1e6


class BadReply(ValueError):
    """A reply that cannot be aggregated; the message says why, for the server's log."""


@dataclass(frozen=True)
class Expected:
    """One tensor a reply must hold: its name, shape and dtype (those of the global tensor)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def expected_of(record: ArrayRecord, names: Iterable[str]) -> list[Expected]:
    """What replies must match: ``names`` with the shapes and dtypes of ``record`` (the global tensors)."""
    out = []
    for n in names:
        arr = record[n]
        out.append(Expected(n, tuple(int(x) for x in arr.shape), np.dtype(arr.dtype)))
    return out


def _short(value: object, limit: int = 60) -> str:
    """A client's value for a log line: its repr, cut (a crafted one can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def decode(array: Array, want: Expected, max_abs: float = MAX_ABS) -> Array:
    """A canonical copy of a client's ``Array`` (numpy's own header for ``want``, the client's values) if its
    metadata, its ``.npy`` header and its buffer all say ``want``'s shape and dtype and every value is finite and
    at most ``max_abs`` in size; else :class:`BadReply`. Nothing the client wrote is parsed by numpy: dtypes are
    compared as strings, and the copy's header is the server's, so every later reader (``np.load`` in any inner
    strategy) reads exactly what was checked."""
    if not isinstance(array, Array) or array.stype != "numpy.ndarray":
        raise BadReply(f"{want.name}: serialization {_short(getattr(array, 'stype', type(array).__name__))}, "
                       "expected 'numpy.ndarray'")
    meta_shape = array.shape if isinstance(array.shape, list | tuple) else None
    if array.dtype != str(want.dtype) or meta_shape is None or len(meta_shape) != len(want.shape) \
            or tuple(meta_shape) != want.shape:
        raise BadReply(f"{want.name}: shape/dtype {_short(meta_shape)}/{_short(array.dtype)}, "
                       f"expected {want.shape}/{want.dtype}")
    try:
        descr, shape, offset, fortran = npy_header(array.data)
    except ValueError as exc:
        raise BadReply(f"{want.name}: {exc}") from None
    if descr != want.dtype.str or shape != want.shape or fortran:
        raise BadReply(f"{want.name}: its bytes say {shape}/{descr}{' (Fortran order)' if fortran else ''}, "
                       f"its metadata {want.shape}/{want.dtype}")
    count = math.prod(want.shape)
    need = want.dtype.itemsize * count
    if len(array.data) - offset != need:
        raise BadReply(f"{want.name}: {len(array.data) - offset} bytes of values, {want.shape}/{want.dtype} "
                       f"needs {need}")
    values = np.frombuffer(array.data, dtype=want.dtype, count=count, offset=offset)
    if values.dtype.kind in "fc" and values.size:
        check_values(values, want.name, max_abs)
    header = canonical_header(want.shape, want.dtype.str)
    if array.data[:offset] == header:
        return array
    return Array(dtype=str(want.dtype), shape=want.shape, stype="numpy.ndarray", data=header + array.data[offset:])


def check_values(values: np.ndarray, name: str, max_abs: float) -> None:
    """:class:`BadReply` unless every value is finite and at most ``max_abs`` in size. Real values take two
    reductions and no temporary (NaN propagates through ``max``/``min``): at 1,000 replies of 1 MB the
    temporaries of ``isfinite`` and ``abs`` were most of the check's time."""
    if values.dtype.kind == "c":
        values = values.view(values.real.dtype)
    hi, lo = float(values.max()), float(values.min())
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise BadReply(f"{name}: contains NaN or Inf")
    top = max(hi, -lo)
    if top > max_abs:
        raise BadReply(f"{name}: values up to {top:.3g}, above the bound {max_abs:g}")


def check_arrays(record: ArrayRecord, expected: list[Expected], max_abs: float = MAX_ABS) -> ArrayRecord:
    """``record`` with exactly the ``expected`` tensors, in that order, each verified by :func:`decode`."""
    got, want = set(record.keys()), {e.name for e in expected}
    if got != want:
        raise BadReply(f"tensor names differ from the round's (unknown: {_short(sorted(got - want)[:3])}, "
                       f"missing: {sorted(want - got)[:3]})")
    return ArrayRecord({e.name: decode(record[e.name], e, max_abs) for e in expected})


def check_weight(metrics: MetricRecord, key: str, ceiling: float) -> None:
    """The averaging weight (``num-examples``) must be a plausible count: one reply claiming 10^9 examples
    would otherwise own the average. ``ceiling`` is the run's ``max-examples``."""
    if key not in metrics:
        raise BadReply(f"no '{key}' in its MetricRecord")
    value = metrics[key]
    if isinstance(value, list) or not math.isfinite(value) or not 0 < value <= ceiling:
        raise BadReply(f"'{key}' is {value!r} (expected a count in 1..{ceiling:g}; max-examples sets the ceiling)")


def finite_scalars(metrics: MetricRecord) -> dict[str, int | float]:
    """The metric values an average can use: finite numbers (lists and NaN/Inf are dropped)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, list) and math.isfinite(v)}


def only_metrics(content: RecordDict) -> MetricRecord:
    """The reply's one MetricRecord (under any name); a second one is ambiguous."""
    records = list(content.metric_records.values())
    if len(records) != 1:
        raise BadReply(f"{len(records)} MetricRecords, expected exactly one")
    return records[0]


def clean_train_reply(content: RecordDict, arrays_key: str, expected: list[Expected], weight_key: str,
                      ceiling: float, max_abs: float = MAX_ABS) -> RecordDict:
    """The canonical content of a train reply (``{arrays_key: verified tensors, "metrics": finite scalars}``),
    or :class:`BadReply`. ConfigRecords are the caller's to check first; they are not passed on."""
    arrays = content.array_records
    if list(arrays.keys()) != [arrays_key]:
        raise BadReply(f"ArrayRecords {sorted(arrays.keys())[:3]}, expected exactly one named '{arrays_key}'")
    metrics = only_metrics(content)
    check_weight(metrics, weight_key, ceiling)
    record = check_arrays(arrays[arrays_key], expected, max_abs)
    return RecordDict({arrays_key: record, METRICS_KEY: MetricRecord(finite_scalars(metrics))})


def clean_evaluate_reply(content: RecordDict, weight_key: str, ceiling: float) -> RecordDict:
    """The canonical content of an evaluate reply (one MetricRecord of finite scalars), or :class:`BadReply`."""
    metrics = only_metrics(content)
    check_weight(metrics, weight_key, ceiling)
    return RecordDict({METRICS_KEY: MetricRecord(finite_scalars(metrics))})


def average_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Each metric's weighted mean over the replies that report it (Flower's arithmetic: ``value * w / total``
    in reply order, so with the same keys everywhere the numbers are Flower's bit for bit). A key one client
    leaves out or sends as NaN (dropped by :func:`finite_scalars`) does not blank it for the others."""
    weights = [float(c[METRICS_KEY][weight_key]) for c in contents]
    keys = dict.fromkeys(k for c in contents for k in c[METRICS_KEY] if k != weight_key)
    out = {}
    for key in keys:
        having = [(c[METRICS_KEY][key], w) for c, w in zip(contents, weights, strict=True) if key in c[METRICS_KEY]]
        total = sum(w for _, w in having)
        value = 0.0
        for v, w in having:
            value += v * (w / total)
        out[key] = value
    return MetricRecord(out)


def common_keys_only(replies: list[Message]) -> None:
    """Leave in each cleaned reply's MetricRecord the keys every reply has: what the inner strategy gets (Flower
    requires one key set; its DP wrappers read metrics of their own, e.g. adaptive clipping's ``norm_bit``). The
    round's metrics themselves come from :func:`average_metrics`, over the replies that report each key."""
    if not replies:
        return
    common = set.intersection(*(set(m.content[METRICS_KEY].keys()) for m in replies))
    for msg in replies:
        record = msg.content[METRICS_KEY]
        if set(record.keys()) != common:
            msg.content[METRICS_KEY] = MetricRecord({k: v for k, v in record.items() if k in common})


class ReplyGate:
    """One reply per node per round, and only from nodes that were sent a message this round."""

    def __init__(self) -> None:
        self._sent: set[int] = set()
        self._seen: set[int] = set()

    def open(self, nodes: Iterable[int]) -> None:
        self._sent, self._seen = set(nodes), set()

    def admit(self, node: int) -> None:
        if node not in self._sent:
            raise BadReply("this node was not sent a message in this round")
        if node in self._seen:
            raise BadReply("a second reply from this node in this round")
        self._seen.add(node)
