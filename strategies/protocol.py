"""The client's half of the FedTT/FedTT+ message protocol, in numpy/Flower terms (no torch).

Any ClientApp can use these functions to take part in a FedTT or FedTT+ run: ``receive_global`` and
``round_trainable`` on the way in, ``reply_content`` on the way out (it packs when the server packed, and
then adds the digest of the packed layout the server checks).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .fedtt import PLAN_KEY, REPLY_KEY, SYNC_KEY
from .packing import encoded, flatten, read_packed, split, unpack
from .precision import FEEDBACK_KEY, FLOAT32, PRECISION_KEY, WireFormat
from .schedules import decode_plan, trainable_names
from .wire import LAYOUT_PREFIX, layout_digest, parse_layout

CACHE_KEY = "fedtt-global"
#: Context.state: a lossy wire format's error-feedback residual, tensor by tensor
RESIDUAL_KEY = "fedtt-wire-residual"


def receive_global(content: RecordDict, state: RecordDict | None = None, arrays_key: str = "arrays") -> ArrayRecord:
    """The node's copy of the global adapters after this message: its cached copy (``state``, a
    Context.state), updated with the message's sync tensors and then its trainable tensors. The copy
    is stored back into ``state`` so a FedTT+ ``sync="delta"`` server can skip unchanged tensors."""
    merged: dict = {}
    if state is not None and CACHE_KEY in state:
        merged.update(state[CACHE_KEY].items())
    for key in (SYNC_KEY, arrays_key):
        if key in content:
            merged.update(named_arrays(content, key).items())
    record = ArrayRecord(merged)
    if state is not None:
        state[CACHE_KEY] = record
    return record


def round_trainable(content: RecordDict, arrays_key: str = "arrays", config_key: str = "config") -> list[str]:
    """Names this node trains (and sends back) this round: the tensors under ``arrays_key``, checked
    against the round's core plan when one is announced."""
    layout = _layout(content, arrays_key, config_key)
    if layout is not None:  # packed: the names are in the layout, no need to unpack the values
        names = [name for name, _ in parse_layout(layout)]
    else:
        names = list(content[arrays_key].keys()) if arrays_key in content else []
    config = content.config_records.get(config_key)
    if config is not None and PLAN_KEY in config:
        planned = trainable_names(names, decode_plan(str(config[PLAN_KEY])))
        if planned != names:
            extra = sorted(set(names) - set(planned))[:3]
            raise ValueError(f"the message's tensors do not follow its core plan (e.g. {extra})")
    return names


def _layout(content: RecordDict, key: str, config_key: str) -> str | None:
    """The layout string of a record the server packed, else None."""
    config = content.config_records.get(config_key)
    if config is None or LAYOUT_PREFIX + key not in config:
        return None
    return str(config[LAYOUT_PREFIX + key])


def wire_format(content: RecordDict, config_key: str = "config") -> WireFormat:
    """The precision the server announced for this message's packed records (float32 when it announced none)."""
    config = content.config_records.get(config_key)
    tag = config.get(PRECISION_KEY) if config is not None else None
    return FLOAT32 if tag is None else WireFormat.parse(str(tag))


def named_arrays(content: RecordDict, key: str = "arrays", config_key: str = "config") -> ArrayRecord:
    """A record of the message by tensor name, unpacked (and decoded to float32) when the server packed it."""
    layout = _layout(content, key, config_key)
    return content[key] if layout is None else unpack(content[key], layout, wire_format(content, config_key))


def _packed_reply(content: RecordDict, trained: ArrayRecord, arrays_key: str, config_key: str,
                  state: RecordDict | None) -> tuple[ArrayRecord, str]:
    """``(packed record, layout)`` of a reply. In a lossy format the record carries the update (``trained`` minus
    what was received, decoded), plus the error-feedback residual kept in ``state`` (a Context.state) when given:
    what rounding dropped from this node's earlier updates is sent with its next one, tensor by tensor."""
    wire = wire_format(content, config_key)
    flat, layout = flatten(trained)
    if not wire.lossy:
        return encoded(flat), layout
    if layout != _layout(content, arrays_key, config_key):
        raise ValueError("the reply's tensors are not those received, in the order received")
    entries = parse_layout(layout)
    update = flat.astype(np.float32) - read_packed(content[arrays_key], wire)
    config = content.config_records.get(config_key)
    if config is not None and config.get(FEEDBACK_KEY) is False:  # the server re-draws or re-gauges what it sends
        state = None
    if state is not None and entries:
        kept = state.array_records.get(RESIDUAL_KEY) or ArrayRecord()
        update += np.concatenate([_residual(kept, name, shape).ravel() for name, shape in entries])
    record = encoded(update, wire)
    if state is not None and entries:
        left = update - wire.decode({n: np.asarray(a.numpy()) for n, a in record.items()})
        left[~np.isfinite(left)] = 0.0  # a diverged update is rejected by the server; it must not haunt the next
        kept.update(split(left, entries).items())
        state[RESIDUAL_KEY] = kept
    return record, layout


def _residual(kept: ArrayRecord, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The residual kept for ``name``; zeros where there is none or it has another shape (the node's rank changed)."""
    if name in kept and tuple(kept[name].shape) == tuple(shape):
        return kept[name].numpy().astype(np.float32)
    return np.zeros(shape, dtype=np.float32)


def reply_arrays(content: RecordDict, trained: ArrayRecord, arrays_key: str = "arrays",
                 config_key: str = "config") -> ArrayRecord:
    """The tensors to send back: ``trained`` (in the order received), packed when the server packed (without an
    error-feedback residual). A packed reply also needs its layout digest: use :func:`reply_content`, which adds
    it."""
    if _layout(content, arrays_key, config_key) is None:
        return trained
    return _packed_reply(content, trained, arrays_key, config_key, None)[0]


def reply_content(content: RecordDict, trained: ArrayRecord, metrics: MetricRecord, arrays_key: str = "arrays",
                  config_key: str = "config", state: RecordDict | None = None) -> RecordDict:
    """The whole train reply: ``trained`` (packed when the server packed), ``metrics`` (with ``num-examples``)
    and, when packed, the digest of what was packed in which order for which round, so a server can tell a
    reply in another order or from another round from a good one. ``state`` (the node's Context.state): where a
    lossy wire format keeps its error-feedback residual; without it, what rounding drops is lost each round."""
    if _layout(content, arrays_key, config_key) is None:
        return RecordDict({arrays_key: trained, "metrics": metrics})
    packed, layout = _packed_reply(content, trained, arrays_key, config_key, state)
    server_round = int(content[config_key].get("server-round", 0))
    digest = ConfigRecord({LAYOUT_PREFIX + arrays_key: layout_digest(layout, server_round)})
    return RecordDict({arrays_key: packed, "metrics": metrics, REPLY_KEY: digest})
