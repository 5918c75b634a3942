"""FedTT and FedTT+ as Flower strategies that wrap any strategy doing the averaging.

``FedTT(inner)`` keeps the full global ArrayRecord on the server, sends only the adapter tensors (TT
cores, adapter biases, head), lets ``inner`` (FastFedAvg, i.e. FedAvg, by default; FedAdam, FedProx, FedMedian, a DP
wrapper, ...) aggregate exactly those, and merges the result back. ``FedTTPlus`` adds the FedTT+
freezing schedule: per round only some cores of every TT layer train and travel up; the rest stay
bit-identical on the server.

Message protocol (what a ClientApp sees):

- ``content["arrays"]``: the tensors that train this round (the inner strategy sees only these);
- ``content["fedtt-sync"]`` (FedTT+ only, when not empty): frozen tensors the node needs to bring its
  copy of the global adapters up to date (all of them, or with ``sync="delta"`` only those changed
  since the node last synchronised);
- ``content["config"]["fedtt-plan"]``: the round's core plan (``strategies.schedules.encode_plan``).

A client replies with exactly the tensors of ``content["arrays"]``, trained, plus a MetricRecord
holding ``num-examples``. Pure numpy/Flower: no torch.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedTrimmedAvg, Strategy

from .fedavg import FastFedAvg
from .packing import as_numpy, pack, read_packed, unpack
from .precision import FEEDBACK_KEY, FLOAT32, PRECISION_KEY, WireFormat
from .schedules import (
    AllSchedule,
    Schedule,
    cores_per_layer,
    decode_plan,
    encode_plan,
    plan_for_round,
    trainable_names,
)
from .ttsvd import average_tt_layers
from .validation import (
    MAX_ABS,
    MAX_EXAMPLES,
    BadReply,
    Expected,
    ReplyGate,
    average_metrics,
    check_values,
    clean_evaluate_reply,
    clean_train_reply,
    common_keys_only,
    expected_of,
)
from .virtual import PARTITION_KEY, VirtualClients
from .wire import LAYOUT_PREFIX, PACKED, format_layout, layout_digest

#: Names of the tensors that travel by default: TT cores, everything inside an adapter, and common
#: task-head names. Pass ``include=`` for other naming schemes.
DEFAULT_INCLUDE = r"(^|\.)core_\d+$|\.adapter\.|^(classifier|score|pre_classifier)\."
SYNC_KEY = "fedtt-sync"
PLAN_KEY = "fedtt-plan"
#: the ConfigRecord of a packed reply: ``{LAYOUT_PREFIX + arrays key: layout_digest(layout, round)}``
REPLY_KEY = "fedtt-reply"

Include = str | Callable[[str], bool] | Iterable[str] | None


def _matcher(include: Include) -> Callable[[str], bool]:
    if include is None:
        include = DEFAULT_INCLUDE
    if isinstance(include, str):
        pattern = re.compile(include)
        return lambda name: pattern.search(name) is not None
    if callable(include):
        return include
    names = set(include)
    return names.__contains__


def record_bytes(content: RecordDict) -> int:
    """Serialized array bytes of a message's content (Flower's ``ArrayRecord.count_bytes``), plus the
    layout strings of packed records (:mod:`strategies.packing`) and their wire format's announcement."""
    layouts = sum(len(k) + (len(v) if isinstance(v, str | bytes) else 8)
                  for rec in content.config_records.values() for k, v in rec.items()
                  if k.startswith(LAYOUT_PREFIX) or k in (PRECISION_KEY, FEEDBACK_KEY))
    return sum(rec.count_bytes() for rec in content.array_records.values()) + layouts


def _finite_state(strategy: object) -> bool:
    """Whether every float array a strategy keeps (FedAdam's ``m_t``/``v_t``, FedAvgM's momentum and copy of the
    model, and those of a wrapped strategy) is finite: a poisoned state would freeze or wreck every later round."""
    seen: set[int] = set()

    def finite(value: object, depth: int = 0) -> bool:
        if id(value) in seen or depth > 4:
            return True
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
        if isinstance(value, Array):
            return finite(as_numpy(value), depth)
        if isinstance(value, ArrayRecord | dict):
            return all(finite(v, depth + 1) for v in value.values())
        if isinstance(value, list | tuple):
            return all(finite(v, depth + 1) for v in value)
        if isinstance(value, Strategy):
            return all(finite(v, depth + 1) for v in vars(value).values())
        return True

    return finite(strategy)


def _subset(arrays: ArrayRecord, names: Iterable[str]) -> ArrayRecord:
    return ArrayRecord({n: arrays[n] for n in names})


def _reply_metric(replies: list[Message], key: str) -> list[float]:
    """``key`` of every successful reply's metrics that has it."""
    return [float(m.content["metrics"][key]) for m in replies if not m.has_error()
            and "metrics" in m.content.metric_records and key in m.content["metrics"]]


class FedTT(Strategy):
    """Exchange and aggregate only the adapter tensors; ``inner`` does the averaging.

    Parameters
    ----------
    inner : Strategy, optional
        The strategy that aggregates (default ``FastFedAvg()``: FedAvg, faster). It only ever sees the
        travelling tensors.
    include : regex, predicate or list of names, optional
        Which tensors of the global ArrayRecord travel (default: :data:`DEFAULT_INCLUDE`). Everything
        else stays on the server, unchanged.
    pack : bool
        Send every record as one flat array plus a layout string (:mod:`strategies.packing`): the same
        numbers without Flower's per-array header; clients reply packed in the same order.
    min_replies : int
        A round with fewer usable replies (after errors, timeouts and rejections) is skipped: the
        global adapters stay as they were.
    average : "cores" or "matrices"
        ``cores`` (the FedTT paper): ``inner`` averages every core like any tensor. ``matrices``: each
        TT layer becomes the TT-SVD of the weighted mean of the clients' rebuilt matrices
        (:mod:`strategies.ttsvd`); the other tensors still go through ``inner``, which must then be a
        plain FedAvg (a server optimizer's state on the cores would not match the cores sent).
    max_examples : float
        The ceiling on a reply's averaging weight (``num-examples``): a reply claiming more is rejected,
        so one client cannot own the average by claiming a huge dataset.
    max_abs : float
        The bound on a reply's values (adapter tensors are O(1)); larger values are a rejection, as they would
        overflow a server optimizer's state.
    wire : WireFormat
        How packed values travel (:mod:`strategies.precision`; needs ``pack``): float32 (default), or float16,
        bfloat16, int8 with per-block scales. The global state stays float32; lossy replies carry the node's
        update, which is added to the values the node was sent.

    Every reply is checked against what the round sent before ``inner`` sees it (:mod:`strategies.validation`):
    one reply per node, exactly the round's tensors with the global shapes and dtypes (metadata, ``.npy``
    header and buffer size agreeing), finite values, a plausible weight, one MetricRecord of finite scalars
    (each metric is averaged over the replies that report it). A bad reply is logged, counted
    (``rounds[r]["rejected"]``) and left out; it never ends the run. Whatever ``inner`` returns is cast back to
    the global tensors' dtypes; an inner strategy that raises, returns non-finite values or ends with non-finite
    state skips the round and is restored to its state before it (FedAdam's moments, FedAvgM's momentum).
    """

    def __init__(self, inner: Strategy | None = None, include: Include = None, pack: bool = False,
                 min_replies: int = 1, average: Literal["cores", "matrices"] = "cores",
                 max_examples: float = MAX_EXAMPLES, max_abs: float = MAX_ABS, wire: WireFormat = FLOAT32) -> None:
        if average not in ("cores", "matrices"):
            raise ValueError(f"average must be 'cores' or 'matrices', got {average!r}")
        if not max_examples >= 1:
            raise ValueError(f"max_examples must be >= 1, got {max_examples!r}")
        self.average = average
        self.inner = inner if inner is not None else FastFedAvg()
        self.include = _matcher(include)
        self.pack = pack
        self.min_replies = min_replies
        self.max_examples = max_examples
        self.max_abs = max_abs
        self.wire = wire
        #: N clients served by a few SuperNodes (strategies.virtual); None: each SuperNode is one client
        self.virtual: VirtualClients | None = None
        self._bases: dict[tuple, np.ndarray] = {}
        self._train_gate, self._evaluate_gate = ReplyGate(), ReplyGate()
        self._server_round = 0
        self.schedule: Schedule = AllSchedule()
        self.sync: Literal["full", "delta"] = "full"
        self._global: ArrayRecord | None = None
        self._expected: list[str] = []
        self._travelling: list[str] = []
        self._version: dict[str, int] = {}
        self._node_synced: dict[int, dict[str, int]] = {}
        self._pending: dict[int, dict[str, int]] = {}
        #: per round: bytes_down, bytes_up, clients, rejected, trainable tensors and the plan
        self.rounds: dict[int, dict] = {}
        #: packed replies may be averaged as flat arrays (all replies of a round have one layout)
        self.flat_replies = True

    # ------------------------------------------------------------------ checkpoints
    def get_state(self) -> dict:
        """What a resumed run needs (picklable): the inner strategy (FedAdam's moments, FedAvgM's
        momentum, ...), the global tensors, their versions and the per-round statistics."""
        return {"inner": self.inner, "global": self._global, "version": dict(self._version),
                "rounds": dict(self.rounds)}

    def set_state(self, state: dict) -> None:
        """Restore :meth:`get_state`. Nodes are assumed to have lost their copies (a restarted run has
        new node contexts), so the next round sends them every frozen tensor they need."""
        self.inner, self._global = state["inner"], state["global"]
        self._version, self.rounds = dict(state["version"]), dict(state["rounds"])
        self._node_synced, self._pending = {}, {}

    # ------------------------------------------------------------------ helpers
    @property
    def arrays_key(self) -> str:
        return getattr(self.inner, "arrayrecord_key", "arrays")

    def travelling(self, arrays: ArrayRecord) -> list[str]:
        names = [n for n in arrays if self.include(n)]
        if not names:
            raise ValueError(
                "FedTT: no tensor of the global ArrayRecord matches `include`; nothing would travel "
                f"(first names: {list(arrays)[:3]})"
            )
        return names

    def select(self, server_round: int, names: list[str]) -> tuple[list[str], str | None, str]:
        """``(trainable names, plan to announce in the config or None, label for the logs)`` of a round.
        FedTT/FedTT+ follow the core schedule; subclasses may choose tensors another way."""
        plan = encode_plan(plan_for_round(self.schedule, server_round, cores_per_layer(names).values()))
        return trainable_names(names, decode_plan(plan)), plan, plan

    def _round(self, server_round: int) -> dict:
        return self.rounds.setdefault(server_round, {"bytes_down": 0, "bytes_up": 0, "rejected": 0})

    def _track_versions(self, arrays: ArrayRecord) -> None:
        if self._global is None:
            self._version = {n: 0 for n in arrays}
        self._global = arrays

    def _sync_for(self, node_id: int, names: Iterable[str]) -> list[str]:
        """Frozen tensors this node must receive to be up to date."""
        if self.sync == "full":
            return list(names)
        have = self._node_synced.get(node_id, {})
        return [n for n in names if have.get(n) != self._version[n]]

    def _finalise(
        self, messages: Iterable[Message], server_round: int, send: list[str], frozen: list[str],
        partitions: list[int] | None = None,
    ) -> list[Message]:
        """Put the tensors to send under the arrays key, attach per-node sync records (and, with virtual clients,
        the partition each message trains), remember what each node was sent, and count bytes down."""
        out = []
        stats = self._round(server_round)
        for i, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            content = RecordDict(dict(msg.content.items()))  # inner strategies share one RecordDict
            if partitions is not None:
                key = self.inner_config_key
                content[key] = ConfigRecord({**content.get(key, {}),
                                             PARTITION_KEY: partitions[i]})
            content[self.arrays_key] = self._node_record(node, _subset(self._global, send))
            sync = self._sync_for(node, frozen)
            if sync:
                content[SYNC_KEY] = self._node_record(node, _subset(self._global, sync))
            if self.pack:
                self._pack(content)
            self._pending[node] = dict(self._version)
            stats["bytes_down"] += record_bytes(content)
            out.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type,
                               group_id=msg.metadata.group_id))
        return out

    def _node_record(self, node: int, record: ArrayRecord) -> ArrayRecord:
        """What ``node`` receives of ``record`` (a subclass may tailor it per node: another TT rank)."""
        return record

    def _pack(self, content: RecordDict) -> None:
        config = ConfigRecord(dict(content[self.inner_config_key].items())) \
            if self.inner_config_key in content else ConfigRecord()
        for key in (self.arrays_key, SYNC_KEY):
            if key in content:
                content[key], config[LAYOUT_PREFIX + key] = pack(content[key], self.wire)
        if self.wire.lossy:
            config[PRECISION_KEY] = self.wire.tag
            if not self.wire_feedback:
                config[FEEDBACK_KEY] = False
        content[self.inner_config_key] = config  # per message: a node's sync layout is its own

    @property
    def wire_feedback(self) -> bool:
        """Whether nodes may keep an error-feedback residual per tensor: not where the server rebuilds the cores by
        TT-SVD each round (``average="matrices"``: another gauge, the residual would land on other values), and not
        with virtual clients (a SuperNode serves another client each round)."""
        return self.average == "cores" and self.virtual is None

    @property
    def inner_config_key(self) -> str:
        return getattr(self.inner, "configrecord_key", "config")

    def _layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of this round's trained tensors, in the order a packed reply holds them."""
        return [(n, tuple(self._global[n].shape)) for n in self._expected]

    def _reply_spec(self) -> list[Expected]:
        """The tensors a train reply must hold: the round's trained tensors, or their one packed array."""
        expected = expected_of(self._global, self._expected)
        return self._packed_spec(expected) if self.pack else expected

    def _packed_spec(self, expected: list[Expected]) -> list[Expected]:
        """The arrays a packed reply of ``expected`` travels as: one flat array (int8: and its scales)."""
        dtypes = {e.dtype for e in expected}
        if len(dtypes) != 1:
            raise ValueError(f"pack: the trained tensors must share one dtype, got {sorted(map(str, dtypes))}")
        dtype = dtypes.pop()
        size = sum(int(np.prod(e.shape)) for e in expected)
        if not self.wire.lossy:
            return [Expected(PACKED, (size,), dtype)]
        return [Expected(n, shape, dt) for n, shape, dt in self.wire.spec(size)]

    def _sent_value(self, node: int, name: str) -> np.ndarray:
        """The values of ``name`` that ``node`` was sent this round (a subclass may tailor them per node)."""
        return as_numpy(self._global[name])

    def _sent_group(self, node: int) -> object:
        """Nodes of one group were sent the same values (:meth:`_reply_base` computes them once per group)."""
        return None

    def _reply_base(self, node: int, names: list[str]) -> np.ndarray:
        """The flat values of ``names`` that ``node`` was sent: a lossy reply is an update to them."""
        key = (self._sent_group(node), tuple(names))
        if key not in self._bases:
            self._bases[key] = np.concatenate([self._sent_value(node, n).ravel() for n in names])
        return self._bases[key]

    def _rebuild(self, msg: Message, layout: list[tuple[str, tuple[int, ...]]]) -> None:
        """A lossy reply's packed update (checked against :meth:`_packed_spec`) as the trained values: what
        the node was sent plus the decoded update, bounded as any reply's values are."""
        update = read_packed(msg.content[self.arrays_key], self.wire)
        base = self._reply_base(msg.metadata.src_node_id, [n for n, _ in layout])
        values = (base + update).astype(base.dtype)
        if values.size:
            check_values(values, "its values after its update", min(self.max_abs, self.wire.max_value))
        msg.content[self.arrays_key] = ArrayRecord({PACKED: Array(np.ascontiguousarray(values))})

    @property
    def weight_key(self) -> str:
        return getattr(self.inner, "weighted_by_key", "num-examples")

    def _clean_train(self, msg: Message, spec: list[Expected], flat: bool, layout: list[tuple[str, tuple[int, ...]]],
                     digest: str | None) -> None:
        """Replace the reply's content by its canonical, verified form, or raise :class:`BadReply`. A packed
        reply must carry ``digest``, that of this round's ``layout`` (names, shapes, order and round)."""
        self._train_gate.admit(msg.metadata.src_node_id)
        if self.pack:
            record = msg.content.config_records.get(REPLY_KEY)
            sent = record.get(LAYOUT_PREFIX + self.arrays_key) if record is not None else None
            if sent is None:
                raise BadReply(f"packed reply without its layout digest (ConfigRecord '{REPLY_KEY}'; reply with "
                               "strategies.reply_content)")
            if sent != digest:
                raise BadReply("packed reply for other tensors, another order or another round (its layout digest "
                               "does not match this round's)")
        msg.content = clean_train_reply(msg.content, self.arrays_key, spec, self.weight_key, self.max_examples,
                                        self.max_abs)
        if self.pack and self.wire.lossy:
            self._rebuild(msg, layout)
        if self.pack and not flat:
            msg.content[self.arrays_key] = unpack(msg.content[self.arrays_key], layout)

    def _reject(self, stats: dict, msg: Message, server_round: int, reason: str, key: str = "rejected") -> None:
        stats[key] = stats.get(key, 0) + 1
        log(WARNING, "FedTT: rejected the reply of node %s in round %s: %s", msg.metadata.src_node_id,
            server_round, reason)

    def _conform(self, agg: ArrayRecord, trained: list[str]) -> dict[str, Array]:
        """The inner strategy's result for ``trained``, in the global tensors' shapes and dtypes (FedAdam's
        arithmetic returns float64, for one); ValueError if a tensor is missing, misshapen or not finite."""
        out = {}
        for name in trained:
            if name not in agg:
                raise ValueError(f"the inner strategy returned no '{name}'")
            ref, values = self._global[name], as_numpy(agg[name])
            if values.shape != tuple(ref.shape):
                raise ValueError(f"the inner strategy returned '{name}' with shape {values.shape}, "
                                 f"expected {tuple(ref.shape)}")
            if not np.isfinite(values).all():
                raise ValueError(f"the inner strategy returned NaN or Inf in '{name}'")
            if self.wire.lossy and not self.wire.carries(values):
                raise ValueError(f"'{name}' would leave {self.wire.precision}'s range (up to {self.wire.max_value:g}): "
                                 "it could not be sent")
            dtype = np.dtype(ref.dtype)
            out[name] = agg[name] if values.dtype == dtype else Array(np.ascontiguousarray(values.astype(dtype)))
        return out

    def _skip(self, stats: dict, server_round: int, why: str) -> tuple[None, None]:
        stats["skipped"] = True
        stats["skip_reason"] = why
        log(WARNING, "FedTT: round %s skipped, the global adapters stay as they were: %s", server_round, why)
        return None, None

    def _mark_synced(self, replies: list[Message]) -> None:
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._node_synced.pop(node, None)  # it may have lost its copy: resend everything next time
            elif node in self._pending:
                self._node_synced[node] = self._pending.pop(node)

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._track_versions(arrays)
        if self.wire.lossy and not self.pack:
            raise ValueError(f"wire precision {self.wire.precision} needs packed messages (pack=True)")
        if self.wire.lossy and type(self.inner).__name__.startswith("DifferentialPrivacyClientSide"):
            raise ValueError(f"wire precision {self.wire.precision}: replies carry updates, which Flower's client-side "
                             "clipping mods do not expect (they clip reply - received); use float32, or local DP "
                             "(DP-SGD on the clients) or a server-side DP wrapper")
        self._bases = {}
        names = self.travelling(arrays)
        train, plan, label = self.select(server_round, names)
        frozen = [n for n in names if n not in set(train)]
        self._expected = train
        self._server_round = server_round
        if plan is not None:
            config[PLAN_KEY] = plan
        stats = self._round(server_round)
        stats.update(plan=label, trainable=len(train), frozen=len(frozen))
        # The inner strategy sees every travelling tensor, every round (FedOpt and the DP wrappers keep
        # per-tensor state); frozen tensors are filled in server-side when the replies come back.
        self._travelling = names
        sent = _subset(arrays, names)
        if isinstance(getattr(self.inner, "current_arrays", None), ArrayRecord):
            # FedAvgM keeps its own copy after round 1; it must step from the model the clients were sent (FedTT+
            # restores frozen cores, a skipped round keeps the old global)
            self.inner.current_arrays = sent
        messages = list(self.inner.configure_train(server_round, sent, config, grid))
        partitions = None
        if self.virtual is not None:  # the sampled SuperNodes serve this round's sampled clients
            partitions = self.virtual.sample(server_round, len(messages))
            messages = messages[:len(partitions)]
        messages = self._finalise(messages, server_round, train, frozen, partitions)
        self._train_gate.open(m.metadata.dst_node_id for m in messages)
        stats["clients"] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        stats = self._round(server_round)
        stats.setdefault("rejected", 0)
        # FastFedAvg averages whatever it gets, key by key: packed replies can be averaged as they are (one
        # flat array each, unpacked once afterwards), and frozen tensors need not be filled in
        fast = type(self.inner) is FastFedAvg
        flat = fast and self.pack and self.flat_replies
        spec, layout = self._reply_spec(), self._layout()  # what every reply of the round must match, once
        digest = layout_digest(format_layout(layout), self._server_round) if self.pack else None
        accepted, errors = [], []
        for msg in replies:
            if msg.has_error():
                errors.append(msg)  # the inner strategy logs and drops error replies itself
                continue
            stats["bytes_up"] += record_bytes(msg.content)
            try:
                self._clean_train(msg, spec, flat, layout, digest)
            except BadReply as exc:
                self._reject(stats, msg, server_round, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - an unforeseen way to be unreadable costs one reply, not the run
                self._reject(stats, msg, server_round, f"unreadable ({type(exc).__name__}: {str(exc)[:200]})")
                continue
            accepted.append(msg)
        self._mark_synced(replies)
        stats["replies"], stats["errors"] = len(accepted), len(errors)
        epsilons = _reply_metric(accepted, "dp-epsilon")
        if epsilons:  # local DP: what the clients of this round have spent so far
            stats["dp_epsilon_max"], stats["dp_epsilon_mean"] = max(epsilons), float(np.mean(epsilons))
        seconds = _reply_metric(accepted, "train-seconds")
        if seconds:  # where a round's time goes: local training vs everything else
            stats["client_train_s_sum"], stats["client_train_s_max"] = float(sum(seconds)), max(seconds)
        if len(accepted) < max(self.min_replies, 1):
            return self._skip(stats, server_round, f"{len(accepted)} usable repl{'y' if len(accepted) == 1 else 'ies'}"
                                                   f" (fewer than min_replies={self.min_replies})")
        self._warn_untrimmed(stats, server_round, len(accepted))
        metrics = average_metrics([m.content for m in accepted], self.weight_key)
        common_keys_only(accepted)
        trained = set(self._expected)
        for msg in ([] if fast else accepted):  # canonical order; frozen tensors filled in from the global copy
            rec = msg.content[self.arrays_key]
            msg.content[self.arrays_key] = ArrayRecord(
                {n: rec[n] if n in trained else self._global[n] for n in self._travelling})
        stats["train_metrics"] = dict(metrics)
        before = self._snapshot_inner()
        try:
            agg, _ = self.inner.aggregate_train(server_round, accepted + errors)
            if agg is None:
                raise ValueError(f"{type(self.inner).__name__} returned no aggregate")
            if flat:
                agg = unpack(agg, layout)
            agg = self._post_aggregate(agg, accepted, flat)
            updated = self._conform(agg, self._expected)
            if not _finite_state(self.inner):
                raise ValueError(f"{type(self.inner).__name__}'s own state became NaN or Inf")
        except Exception as exc:  # noqa: BLE001 - whatever the inner strategy raises, the run goes on
            if before is not None:
                self.inner = before
            return self._skip(stats, server_round, f"aggregation failed: {type(exc).__name__}: {str(exc)[:300]}")
        # frozen tensors keep their exact bits, whatever the inner strategy did to them
        merged = ArrayRecord({n: updated.get(n, a) for n, a in self._global.items()})
        for n in trained:
            self._version[n] += 1
        self._global = merged
        return merged, metrics

    def _snapshot_inner(self) -> Strategy | None:
        """The inner strategy's state (moments, momentum) as it is, to restore should this round fail; None
        (and one log line) for a strategy that cannot be copied (it holds a lock or an open file)."""
        try:
            return copy.deepcopy(self.inner)
        except Exception as exc:  # noqa: BLE001 - a strategy we cannot copy still aggregates, without the net
            if not getattr(self, "_snapshot_warned", False):
                self._snapshot_warned = True
                log(WARNING, "FedTT: %s cannot be copied (%s): a failed round cannot restore its state",
                    type(self.inner).__name__, exc)
            return None

    def _warn_untrimmed(self, stats: dict, server_round: int, replies: int) -> None:
        """FedTrimmedAvg cuts ``int(beta * n)`` replies from each end: with few replies that is none, and the
        "robust" average is a plain mean. Say so rather than let it pass silently."""
        beta = getattr(self.inner, "beta", None) if isinstance(self.inner, FedTrimmedAvg) else None
        if beta is not None and int(beta * replies) == 0:
            stats["untrimmed"] = True
            log(WARNING, "FedTT: round %s: FedTrimmedAvg with beta %g trims nothing from %d replies (it needs at "
                "least %d): this round is a plain mean", server_round, beta, replies,
                math.ceil(1 / beta) if beta > 0 else 0)

    def _post_aggregate(self, agg: ArrayRecord, accepted: list[Message], flat: bool) -> ArrayRecord:
        """The inner strategy's mean, before it is checked and merged: where a subclass (or ``average=
        "matrices"``) replaces it or reads the accepted replies."""
        return self._average_matrices(agg, accepted, flat) if self.average == "matrices" else agg

    def reply_tensors(self, msg: Message, names: Iterable[str], flat: bool) -> dict[str, np.ndarray]:
        """``names`` of an accepted reply, as arrays (a packed reply is unpacked)."""
        rec = unpack(msg.content[self.arrays_key], self._layout()) if flat else msg.content[self.arrays_key]
        return {n: as_numpy(rec[n]) for n in names}

    def reply_weight(self, msg: Message) -> float:
        key = self.weight_key
        return float(next(r[key] for r in msg.content.metric_records.values() if key in r))

    def _average_matrices(self, agg: ArrayRecord, replies: list[Message], flat: bool) -> ArrayRecord:
        """``agg`` with every TT layer's cores replaced by the TT-SVD of the mean rebuilt matrix."""
        layers = cores_per_layer(self._expected)
        cores = {f"{layer}.core_{k}" for layer, d in layers.items() for k in range(d)}
        if not cores <= set(self._expected):
            raise ValueError("average='matrices' needs every core of a TT layer to train each round "
                             "(FedTT, not a FedTT+ schedule)")
        arrays = [self.reply_tensors(msg, cores, flat) for msg in replies]
        weights = [self.reply_weight(msg) for msg in replies]
        averaged = average_tt_layers(arrays, weights, layers)
        return ArrayRecord({n: Array(averaged[n]) if n in averaged else a for n, a in agg.items()})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._track_versions(arrays)
        names = self.travelling(arrays)
        messages = self.inner.configure_evaluate(server_round, _subset(arrays, names), config, grid)
        messages = self._finalise(messages, server_round, *((names, []) if self.sync == "full" else ([], names)))
        self._evaluate_gate.open(m.metadata.dst_node_id for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        stats = self._round(server_round)
        self._mark_synced(replies)
        accepted = []
        for msg in replies:
            if not msg.has_error():
                try:
                    self._evaluate_gate.admit(msg.metadata.src_node_id)
                    msg.content = clean_evaluate_reply(msg.content, self.weight_key, self.max_examples)
                except Exception as exc:  # noqa: BLE001 - BadReply, or unreadable: one reply, not the run
                    self._reject(stats, msg, server_round, str(exc)[:300], key="evaluate_rejected")
                    continue
            accepted.append(msg)
        good = [m for m in accepted if not m.has_error()]
        metrics = average_metrics([m.content for m in good], self.weight_key) if good else None
        common_keys_only(good)
        try:
            self.inner.aggregate_evaluate(server_round, accepted)  # its bookkeeping and log; the metrics are ours
        except Exception as exc:  # noqa: BLE001 - a failed evaluation never ends the run
            log(WARNING, "FedTT: round %s: federated evaluation not aggregated: %s: %s", server_round,
                type(exc).__name__, exc)
            metrics = None
        stats["evaluate_metrics"] = dict(metrics) if metrics else {}
        return metrics

    def summary(self) -> None:
        log(INFO, "\t├── %s (schedule %r, sync %s) around:", type(self).__name__, self.schedule, self.sync)
        self.inner.summary()


class FedTTPlus(FedTT):
    """FedTT+: a server-side freezing schedule; per round only the scheduled cores of every TT layer
    (by default the first, the last and one intermediate core that advances each round) train and
    travel up, together with the non-core tensors (adapter biases, head). Frozen cores stay
    bit-identical on the server.

    ``sync="delta"`` (default) sends a node only the frozen tensors that changed since it last
    synchronised (clients keep their copy of the global adapters between rounds); ``sync="full"``
    sends all of them every time (stateless clients, e.g. cross-device).
    """

    def __init__(
        self,
        inner: Strategy | None = None,
        include: Include = None,
        schedule: Schedule | None = None,
        sync: Literal["full", "delta"] = "delta",
        pack: bool = False,
    ) -> None:
        super().__init__(inner, include, pack)
        if sync not in ("full", "delta"):
            raise ValueError(f"sync must be 'full' or 'delta', got {sync!r}")
        from .schedules import CyclicSchedule

        self.schedule = schedule if schedule is not None else CyclicSchedule()
        self.sync = sync


class FedAlternating(FedTT):
    """RoLoRA-style alternation: round t trains and sends only the tensors of group ``(t-1) % len(groups)``
    (regexes; default LoRA's A then B), plus every tensor in no group (e.g. the head). The other group
    stays frozen and bit-identical that round; with ``sync="delta"`` it comes down only when changed."""

    def __init__(
        self,
        inner: Strategy | None = None,
        include: Include = None,
        groups: tuple[str, ...] = (r"\.lora_A\.", r"\.lora_B\."),
        sync: Literal["full", "delta"] = "delta",
        pack: bool = False,
    ) -> None:
        super().__init__(inner, include, pack)
        if len(groups) < 2:
            raise ValueError("FedAlternating needs at least two groups to alternate between")
        self.groups = tuple(re.compile(g) for g in groups)
        self.sync = sync

    def select(self, server_round: int, names: list[str]) -> tuple[list[str], str | None, str]:
        active = self.groups[(server_round - 1) % len(self.groups)]
        train = [n for n in names if active.search(n) or not any(g.search(n) for g in self.groups)]
        return train, None, f"group {active.pattern}"
