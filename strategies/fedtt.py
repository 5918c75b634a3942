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

import re
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .fedavg import FastFedAvg
from .packing import LAYOUT_PREFIX, PACKED, as_numpy, pack, unpack
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

#: Names of the tensors that travel by default: TT cores, everything inside an adapter, and common
#: task-head names. Pass ``include=`` for other naming schemes.
DEFAULT_INCLUDE = r"(^|\.)core_\d+$|\.adapter\.|^(classifier|score|pre_classifier)\."
SYNC_KEY = "fedtt-sync"
#: the largest example count a reply may claim (its FedAvg weight); larger is treated as a bad reply
MAX_EXAMPLES = 10**9
PLAN_KEY = "fedtt-plan"

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
    layout strings of packed records (:mod:`strategies.packing`)."""
    layouts = sum(len(k) + len(str(v)) for rec in content.config_records.values() for k, v in rec.items()
                  if k.startswith(LAYOUT_PREFIX))
    return sum(rec.count_bytes() for rec in content.array_records.values()) + layouts


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
    """

    def __init__(self, inner: Strategy | None = None, include: Include = None, pack: bool = False,
                 min_replies: int = 1, average: Literal["cores", "matrices"] = "cores") -> None:
        if average not in ("cores", "matrices"):
            raise ValueError(f"average must be 'cores' or 'matrices', got {average!r}")
        self.average = average
        self.inner = inner if inner is not None else FastFedAvg()
        self.include = _matcher(include)
        self.pack = pack
        self.min_replies = min_replies
        self.max_examples = MAX_EXAMPLES
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
        self, messages: Iterable[Message], server_round: int, send: list[str], frozen: list[str]
    ) -> list[Message]:
        """Put the tensors to send under the arrays key, attach per-node sync records, remember what
        each node was sent, and count bytes down."""
        out = []
        stats = self._round(server_round)
        for msg in messages:
            node = msg.metadata.dst_node_id
            content = RecordDict(dict(msg.content.items()))  # inner strategies share one RecordDict
            content[self.arrays_key] = _subset(self._global, send)
            sync = self._sync_for(node, frozen)
            if sync:
                content[SYNC_KEY] = _subset(self._global, sync)
            if self.pack:
                self._pack(content)
            self._pending[node] = dict(self._version)
            stats["bytes_down"] += record_bytes(content)
            out.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type,
                               group_id=msg.metadata.group_id))
        return out

    def _pack(self, content: RecordDict) -> None:
        config = ConfigRecord(dict(content[self.inner_config_key].items())) \
            if self.inner_config_key in content else ConfigRecord()
        for key in (self.arrays_key, SYNC_KEY):
            if key in content:
                content[key], config[LAYOUT_PREFIX + key] = pack(content[key])
        content[self.inner_config_key] = config  # per message: a node's sync layout is its own

    @property
    def inner_config_key(self) -> str:
        return getattr(self.inner, "configrecord_key", "config")

    def _unpack_reply(self, msg: Message) -> str | None:
        """Packed replies come back in the order sent: name them again (or say why they cannot be)."""
        rec = msg.content.array_records.get(self.arrays_key)
        if rec is None:
            return None
        try:
            msg.content[self.arrays_key] = unpack(
                rec, self._layout())
        except ValueError as exc:
            return f"packed reply: {exc}"
        return None

    def _layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of this round's trained tensors, in the order a packed reply holds them."""
        return [(n, tuple(self._global[n].shape)) for n in self._expected]

    def _packed_spec(self) -> tuple[int, set[str]]:
        """``(values, dtypes)`` a packed reply of this round must have."""
        return (sum(int(np.prod(self._global[n].shape)) for n in self._expected),
                {self._global[n].dtype for n in self._expected})

    def _packed_problem(self, msg: Message, spec: tuple[int, set[str]]) -> str | None:
        """Why a packed reply cannot be averaged as it is (None if it can): the flat array must hold the
        round's tensors (in the order sent), in their dtype, all finite."""
        rec = msg.content.array_records.get(self.arrays_key)
        if rec is None:
            return f"no ArrayRecord '{self.arrays_key}'"
        if list(rec.keys()) != [PACKED]:
            return f"packed reply: expected one array named {PACKED!r}, got {list(rec.keys())[:3]}"
        flat, (want, dtypes) = as_numpy(rec[PACKED]), spec
        if flat.ndim != 1 or flat.size != want:
            return f"packed reply: packed array has {flat.size} values, the layout needs {want}"
        if {str(flat.dtype)} != dtypes:
            return f"packed reply: dtype {flat.dtype}, expected {sorted(dtypes)}"
        if not np.isfinite(flat).all():
            return "packed reply: contains NaN or Inf"
        return self._weight_problem(msg)

    def _mark_synced(self, replies: list[Message]) -> None:
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._node_synced.pop(node, None)  # it may have lost its copy: resend everything next time
            elif node in self._pending:
                self._node_synced[node] = self._pending.pop(node)

    def _reject_reason(self, msg: Message) -> str | None:
        """Why a train reply cannot be aggregated (None if it can)."""
        arrays = msg.content.array_records
        if self.arrays_key not in arrays:
            return f"no ArrayRecord '{self.arrays_key}'"
        rec = arrays[self.arrays_key]
        got, want = set(rec.keys()), set(self._expected)
        if got != want:
            return f"tensor names differ from the round's (unknown: {sorted(got - want)[:3]}, " \
                   f"missing: {sorted(want - got)[:3]})"
        for name in self._expected:
            arr, ref = rec[name], self._global[name]
            if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
                return f"{name}: shape/dtype {tuple(arr.shape)}/{arr.dtype}, expected {tuple(ref.shape)}/{ref.dtype}"
            if not np.isfinite(as_numpy(arr)).all():
                return f"{name}: contains NaN or Inf"
        return self._weight_problem(msg)

    def _weight_problem(self, msg: Message) -> str | None:
        """The averaging weight (``num-examples`` by default) must be a positive, plausible count: one
        reply claiming 10^12 examples would otherwise own the average."""
        key = getattr(self.inner, "weighted_by_key", "num-examples")
        metrics = [rec for rec in msg.content.metric_records.values() if key in rec]
        if not metrics:
            return f"no '{key}' in its MetricRecord"
        value = metrics[0][key]
        if isinstance(value, list) or not np.isfinite(value) or value <= 0 or value > self.max_examples:
            return f"'{key}' is {value!r} (expected a count in 1..{self.max_examples:g})"
        return None

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._track_versions(arrays)
        names = self.travelling(arrays)
        train, plan, label = self.select(server_round, names)
        frozen = [n for n in names if n not in set(train)]
        self._expected = train
        if plan is not None:
            config[PLAN_KEY] = plan
        stats = self._round(server_round)
        stats.update(plan=label, trainable=len(train), frozen=len(frozen))
        # The inner strategy sees every travelling tensor, every round (FedOpt and the DP wrappers keep
        # per-tensor state); frozen tensors are filled in server-side when the replies come back.
        self._travelling = names
        messages = self.inner.configure_train(server_round, _subset(arrays, names), config, grid)
        messages = self._finalise(messages, server_round, train, frozen)
        stats["clients"] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        stats = self._round(server_round)
        # FastFedAvg averages whatever it gets, key by key: packed replies can be averaged as they are (one
        # flat array each, unpacked once afterwards), and frozen tensors need not be filled in
        fast = type(self.inner) is FastFedAvg
        flat = fast and self.pack
        spec = self._packed_spec() if flat else None
        valid = []
        for msg in replies:
            if msg.has_error():
                valid.append(msg)  # the inner strategy logs and drops error replies itself
                continue
            stats["bytes_up"] += record_bytes(msg.content)
            if flat:
                reason = self._packed_problem(msg, spec)
            else:
                reason = (self._unpack_reply(msg) if self.pack else None) or self._reject_reason(msg)
            if reason is None:
                valid.append(msg)
            else:
                stats["rejected"] += 1
                log(WARNING, "FedTT: rejected the reply of node %s in round %s: %s",
                    msg.metadata.src_node_id, server_round, reason)
        self._mark_synced(replies)
        stats["replies"] = sum(not m.has_error() for m in valid)
        stats["errors"] = sum(m.has_error() for m in replies)
        epsilons = _reply_metric(valid, "dp-epsilon")
        if epsilons:  # local DP: what the clients of this round have spent so far
            stats["dp_epsilon_max"], stats["dp_epsilon_mean"] = max(epsilons), float(np.mean(epsilons))
        seconds = _reply_metric(valid, "train-seconds")
        if seconds:  # where a round's time goes: local training vs everything else
            stats["client_train_s_sum"], stats["client_train_s_max"] = float(sum(seconds)), max(seconds)
        if stats["replies"] < max(self.min_replies, 1):
            stats["skipped"] = True
            log(WARNING, "FedTT: %d usable repl%s in round %s (fewer than min_replies=%d): round skipped, the "
                "global adapters stay as they were", stats["replies"], "y" if stats["replies"] == 1 else "ies",
                server_round, self.min_replies)
            return None, None
        trained = set(self._expected)
        for msg in ([] if fast else valid):  # canonical order; frozen tensors filled in from the global copy
            if not msg.has_error():
                rec = msg.content[self.arrays_key]
                msg.content[self.arrays_key] = ArrayRecord(
                    {n: rec[n] if n in trained else self._global[n] for n in self._travelling})
        agg, metrics = self.inner.aggregate_train(server_round, valid)
        stats["train_metrics"] = dict(metrics) if metrics else {}
        if agg is None:
            return None, metrics
        if flat:
            agg = unpack(agg, self._layout())
        if self.average == "matrices":
            agg = self._average_matrices(agg, [m for m in valid if not m.has_error()], flat)
        # frozen tensors keep their exact bits, whatever the inner strategy did to them
        merged = ArrayRecord({n: (agg[n] if n in trained and n in agg else a) for n, a in self._global.items()})
        for n in trained:
            self._version[n] += 1
        self._global = merged
        return merged, metrics

    def _average_matrices(self, agg: ArrayRecord, replies: list[Message], flat: bool) -> ArrayRecord:
        """``agg`` with every TT layer's cores replaced by the TT-SVD of the mean rebuilt matrix."""
        layers = cores_per_layer(self._expected)
        cores = {f"{layer}.core_{k}" for layer, d in layers.items() for k in range(d)}
        if not cores <= set(self._expected):
            raise ValueError("average='matrices' needs every core of a TT layer to train each round "
                             "(FedTT, not a FedTT+ schedule)")
        layout = self._layout()
        key = getattr(self.inner, "weighted_by_key", "num-examples")
        arrays, weights = [], []
        for msg in replies:
            rec = unpack(msg.content[self.arrays_key], layout) if flat else msg.content[self.arrays_key]
            arrays.append({n: as_numpy(rec[n]) for n in cores})
            weights.append(float(next(r[key] for r in msg.content.metric_records.values() if key in r)))
        averaged = average_tt_layers(arrays, weights, layers)
        return ArrayRecord({n: Array(averaged[n]) if n in averaged else a for n, a in agg.items()})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._track_versions(arrays)
        names = self.travelling(arrays)
        messages = self.inner.configure_evaluate(server_round, _subset(arrays, names), config, grid)
        if self.sync == "full":
            return self._finalise(messages, server_round, names, [])
        return self._finalise(messages, server_round, [], names)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self._mark_synced(replies)
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        self._round(server_round)["evaluate_metrics"] = dict(metrics) if metrics else {}
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
