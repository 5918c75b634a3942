"""The client's half of the FedTT/FedTT+ message protocol, in numpy/Flower terms (no torch).

Any ClientApp can use these functions to take part in a FedTT or FedTT+ run: ``receive_global`` and
``round_trainable`` on the way in, ``reply_content`` on the way out (it packs when the server packed, and
then adds the digest of the packed layout the server checks).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .fedtt import PLAN_KEY, REPLY_KEY, SYNC_KEY
from .packing import pack, unpack
from .schedules import decode_plan, trainable_names
from .wire import LAYOUT_PREFIX, layout_digest, parse_layout

CACHE_KEY = "fedtt-global"


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


def named_arrays(content: RecordDict, key: str = "arrays", config_key: str = "config") -> ArrayRecord:
    """A record of the message by tensor name, unpacked when the server packed it."""
    layout = _layout(content, key, config_key)
    return content[key] if layout is None else unpack(content[key], layout)


def reply_arrays(content: RecordDict, trained: ArrayRecord, arrays_key: str = "arrays",
                 config_key: str = "config") -> ArrayRecord:
    """The tensors to send back: ``trained`` (in the order received), packed when the server packed. A packed
    reply also needs its layout digest: use :func:`reply_content`, which adds it."""
    return trained if _layout(content, arrays_key, config_key) is None else pack(trained)[0]


def reply_content(content: RecordDict, trained: ArrayRecord, metrics: MetricRecord, arrays_key: str = "arrays",
                  config_key: str = "config") -> RecordDict:
    """The whole train reply: ``trained`` (packed when the server packed), ``metrics`` (with ``num-examples``)
    and, when packed, the digest of what was packed in which order for which round, so a server can tell a
    reply in another order or from another round from a good one."""
    if _layout(content, arrays_key, config_key) is None:
        return RecordDict({arrays_key: trained, "metrics": metrics})
    packed, layout = pack(trained)
    server_round = int(content[config_key].get("server-round", 0))
    digest = ConfigRecord({LAYOUT_PREFIX + arrays_key: layout_digest(layout, server_round)})
    return RecordDict({arrays_key: packed, "metrics": metrics, REPLY_KEY: digest})
