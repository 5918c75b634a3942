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

from .wire import npy_header

METRICS_KEY = "metrics"
#: the default ceiling on a reply's averaging weight (its claimed example count)
MAX_EXAMPLES = 1_000_000


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


def decode(array: Array, want: Expected) -> np.ndarray:
    """The values of a client's ``Array`` if its metadata, its ``.npy`` header and its buffer all say
    ``want``'s shape and dtype and every value is finite; else :class:`BadReply`."""
    if not isinstance(array, Array) or array.stype != "numpy.ndarray":
        raise BadReply(f"{want.name}: serialization {getattr(array, 'stype', type(array).__name__)!r}, "
                       "expected 'numpy.ndarray'")
    try:
        meta_shape, meta_dtype = tuple(int(x) for x in array.shape), np.dtype(array.dtype)
    except (TypeError, ValueError):
        raise BadReply(f"{want.name}: unreadable metadata (dtype {array.dtype!r}, shape {array.shape!r})") from None
    if meta_shape != want.shape or meta_dtype != want.dtype:
        raise BadReply(f"{want.name}: shape/dtype {meta_shape}/{meta_dtype}, expected {want.shape}/{want.dtype}")
    try:
        dtype, shape, offset, fortran = npy_header(array.data)
    except ValueError as exc:
        raise BadReply(f"{want.name}: {exc}") from None
    if dtype != want.dtype or shape != want.shape or fortran:
        raise BadReply(f"{want.name}: its bytes say {shape}/{dtype}{' (Fortran order)' if fortran else ''}, "
                       f"its metadata {want.shape}/{want.dtype}")
    need = want.dtype.itemsize * math.prod(want.shape)
    if len(array.data) - offset != need:
        raise BadReply(f"{want.name}: {len(array.data) - offset} bytes of values, {want.shape}/{want.dtype} "
                       f"needs {need}")
    values = np.frombuffer(array.data, dtype=want.dtype, count=math.prod(want.shape), offset=offset)
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        raise BadReply(f"{want.name}: contains NaN or Inf")
    return values.reshape(want.shape)


def check_arrays(record: ArrayRecord, expected: list[Expected]) -> ArrayRecord:
    """``record`` with exactly the ``expected`` tensors, in that order, each verified by :func:`decode`."""
    got, want = set(record.keys()), {e.name for e in expected}
    if got != want:
        raise BadReply(f"tensor names differ from the round's (unknown: {sorted(got - want)[:3]}, "
                       f"missing: {sorted(want - got)[:3]})")
    for e in expected:
        decode(record[e.name], e)
    return ArrayRecord({e.name: record[e.name] for e in expected})


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
                      ceiling: float) -> RecordDict:
    """The canonical content of a train reply (``{arrays_key: verified tensors, "metrics": finite scalars}``),
    or :class:`BadReply`. ConfigRecords are the caller's to check first; they are not passed on."""
    arrays = content.array_records
    if list(arrays.keys()) != [arrays_key]:
        raise BadReply(f"ArrayRecords {sorted(arrays.keys())[:3]}, expected exactly one named '{arrays_key}'")
    metrics = only_metrics(content)
    check_weight(metrics, weight_key, ceiling)
    record = check_arrays(arrays[arrays_key], expected)
    return RecordDict({arrays_key: record, METRICS_KEY: MetricRecord(finite_scalars(metrics))})


def clean_evaluate_reply(content: RecordDict, weight_key: str, ceiling: float) -> RecordDict:
    """The canonical content of an evaluate reply (one MetricRecord of finite scalars), or :class:`BadReply`."""
    metrics = only_metrics(content)
    check_weight(metrics, weight_key, ceiling)
    return RecordDict({METRICS_KEY: MetricRecord(finite_scalars(metrics))})


def common_metrics(replies: list[Message]) -> list[str]:
    """Keep, in every cleaned reply, only the metric keys all of them have (Flower's averaging requires one
    key set); returns the keys dropped somewhere, for the log."""
    if not replies:
        return []
    keys = [set(m.content[METRICS_KEY].keys()) for m in replies]
    common = set.intersection(*keys)
    dropped = sorted(set.union(*keys) - common)
    if dropped:
        for msg in replies:
            rec = msg.content[METRICS_KEY]
            msg.content[METRICS_KEY] = MetricRecord({k: v for k, v in rec.items() if k in common})
    return dropped


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
