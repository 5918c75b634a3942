"""Clients with different TT ranks (numpy and Flower only; no torch).

A phone and a GPU server need not carry the same adapter. Each node declares its TT rank (a Flower ``query``
message to each sampled node whose rank is not known yet: the reply's ``adapter-rank``; a node that does not
answer sits the round out and is asked again, a node that fails is asked again); the server keeps the global
adapter at the largest rank ``R`` and:

- **down**: sends a node of rank ``r < R`` every TT layer as the TT-SVD of the global layer at ranks
  ``(1, r, ..., r, 1)`` (Oseledets 2011: quasi-optimal among rank-``r`` TTs), so its bytes follow its rank;
  the other tensors (head, biases, norms) as they are;
- **up**: checks a node's reply against the shapes it was sent (its rank), then pads its cores with zeros to
  rank ``R``, which is exact (the represented matrix does not change);
- **aggregates** every TT layer as the TT-SVD at rank ``R`` of the weighted mean of the clients' rebuilt
  matrices (``average="matrices"``, :mod:`strategies.ttsvd`): each client weighs in with the matrix it trained,
  whatever its rank.

Cost on the server per round: one TT-SVD per layer and distinct node rank down, and one rebuild per layer and
reply plus one TT-SVD per layer up (for MiniLM's 12 small adapter layers, milliseconds).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .fedtt import FedTT, Include
from .packing import as_numpy
from .schedules import cores_per_layer
from .ttsvd import tt_full, tt_svd
from .validation import Expected, expected_of
from .wire import format_layout, layout_digest

RANK_KEY = "adapter-rank"


def truncate_layer(cores: list[np.ndarray], rank: int) -> list[np.ndarray]:
    """The rank-``rank`` TT-SVD of the layer the cores represent (quasi-optimal: within sqrt(d - 1) of the best
    rank-``rank`` TT in Frobenius norm), in the cores' dtype."""
    ranks = [1] + [rank] * (len(cores) - 1) + [1]
    return [c.astype(cores[0].dtype) for c in tt_svd(tt_full(cores), ranks)]


def pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` zero-padded at the end of every axis to ``shape``: exact for a TT core (larger boundary ranks)
    and for LoRA's A (more rows) and B (more columns) alike, the represented matrix does not change."""
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


class NodeRanks:
    """Per-node adapter ranks for a :class:`FedTT` subclass: learns each node's rank (a ``query`` message, once),
    sends it the tensors :meth:`tailor` makes for its rank, checks its reply at those shapes and pads it back to
    the global ones. Replies of different ranks have different layouts: they are never averaged flat."""

    node_rank: dict[int, int]
    query_timeout: float = 600.0
    per_node: bool = True

    def _init_ranks(self, query_timeout: float) -> None:
        self.node_rank, self.query_timeout = {}, query_timeout
        self._sent: dict[int, dict[str, tuple[int, ...]]] = {}  # node -> shapes of the tensors it was sent
        self._tailored: dict[int, dict[str, np.ndarray]] = {}  # rank -> its tensors, for the current global
        self.flat_replies = False

    @property
    def global_rank(self) -> int:
        raise NotImplementedError

    def tailor(self, rank: int) -> dict[str, np.ndarray]:
        """The travelling tensors that differ at ``rank`` from the global ones (a subclass decides how)."""
        raise NotImplementedError

    def learn_ranks(self, grid: Grid, nodes: Iterable[int]) -> None:
        """Ask the nodes whose rank is unknown (one ``query`` message each); validate what they say."""
        unknown = sorted({n for n in nodes if n not in self.node_rank})
        if not unknown:
            return
        ask = [Message(RecordDict({"config": ConfigRecord({"ask": RANK_KEY})}), dst_node_id=n, message_type="query")
               for n in unknown]
        replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(ask, timeout=self.query_timeout)}
        top = self.global_rank
        for node in unknown:
            msg = replies.get(node)
            if msg is None or msg.has_error():  # not recorded: it is left out of this round and asked again
                log(WARNING, "FedTT: node %s did not say its rank; it sits this round out and is asked again", node)
                continue
            values = [r.get(RANK_KEY) for r in msg.content.metric_records.values() if RANK_KEY in r]
            said = values[0] if len(values) == 1 else None
            rank = said if isinstance(said, int) and not isinstance(said, bool) and 1 <= said <= top else top
            if rank != said:
                log(WARNING, "FedTT: node %s gave an invalid rank %r (1..%s); it gets the global rank", node, said, top)
            self.node_rank[node] = rank

    def _begin(self, arrays: ArrayRecord, grid: Grid) -> None:
        self._track_versions(arrays)
        self._travelling = self.travelling(arrays)
        self._tailored, self._sent, self._grid = {}, {}, grid

    def _finalise(self, messages: Iterable[Message], server_round: int, send: list[str],
                  frozen: list[str], partitions: list[int] | None = None) -> list[Message]:
        """Ask the nodes the inner strategy sampled (after it waited for enough of them) for any rank not known
        yet; a node that does not answer sits this round out."""
        messages = list(messages)
        if self.per_node:
            self.learn_ranks(self._grid, [m.metadata.dst_node_id for m in messages])
            messages = [m for m in messages if m.metadata.dst_node_id in self.node_rank]
        return super()._finalise(messages, server_round, send, frozen, partitions)

    def _mark_synced(self, replies: list[Message]) -> None:
        super()._mark_synced(replies)
        for msg in replies:  # a node that failed may have been reconfigured (another rank): ask it again
            if msg.has_error():
                self.node_rank.pop(msg.metadata.src_node_id, None)

    def _node_record(self, node: int, record: ArrayRecord) -> ArrayRecord:
        if not self.per_node:
            return record
        rank = self.node_rank.get(node, self.global_rank)
        if rank < self.global_rank and rank not in self._tailored:
            self._tailored[rank] = self.tailor(rank)
        mine = self._tailored.get(rank, {}) if rank < self.global_rank else {}
        out = ArrayRecord({n: Array(np.ascontiguousarray(mine[n])) if n in mine else a for n, a in record.items()})
        self._sent.setdefault(node, {}).update({n: tuple(int(x) for x in a.shape) for n, a in out.items()})
        return out

    @property
    def wire_feedback(self) -> bool:
        """No error feedback across nodes of other ranks: their cores are a fresh TT-SVD truncation each round."""
        return not self.per_node and super().wire_feedback

    def _sent_group(self, node: int) -> object:
        return self.node_rank.get(node, self.global_rank) if self.per_node else None

    def _sent_value(self, node: int, name: str) -> np.ndarray:
        rank = self._sent_group(node)
        if rank is not None and rank < self.global_rank and name in self._tailored.get(rank, {}):
            return self._tailored[rank][name]
        return super()._sent_value(node, name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._begin(arrays, grid)
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._begin(arrays, grid)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def _clean_train(self, msg: Message, spec: list[Expected], flat: bool, layout: list[tuple[str, tuple[int, ...]]],
                     digest: str | None) -> None:
        """A node of a lower rank replies at the shapes it was sent; checked against those, then padded to the
        global shapes, so everything after this sees global shapes."""
        sent = self._sent.get(msg.metadata.src_node_id, {})
        if all(sent.get(n, tuple(self._global[n].shape)) == tuple(self._global[n].shape) for n in self._expected):
            return super()._clean_train(msg, spec, flat, layout, digest)
        node_spec = [Expected(e.name, sent.get(e.name, e.shape), e.dtype)
                     for e in expected_of(self._global, self._expected)]
        node_layout = [(e.name, e.shape) for e in node_spec]
        if self.pack:
            node_spec = self._packed_spec(node_spec)
        node_digest = layout_digest(format_layout(node_layout), self._server_round) if self.pack else None
        super()._clean_train(msg, node_spec, False, node_layout, node_digest)
        record = msg.content[self.arrays_key]
        msg.content[self.arrays_key] = ArrayRecord({
            n: Array(pad_to(as_numpy(record[n]), tuple(self._global[n].shape)))
            if tuple(record[n].shape) != tuple(self._global[n].shape) else record[n] for n in record})


class FedTTHetero(NodeRanks, FedTT):
    """FedTT for nodes of different TT ranks (module docstring). ``inner`` must average (FedAvg/FedProx);
    ``query_timeout``: how long the first round waits for the nodes' ranks (a node that does not answer sits that
    round out and is asked again when next sampled)."""

    def __init__(self, inner: Strategy | None = None, include: Include = None, pack: bool = False,
                 query_timeout: float = 600.0) -> None:
        FedTT.__init__(self, inner, include=include, pack=pack, average="matrices")
        self._init_ranks(query_timeout)

    @property
    def global_rank(self) -> int:
        first = next(n for n in self._travelling if n.endswith(".core_0"))
        return int(self._global[first].shape[-1])

    def tailor(self, rank: int) -> dict[str, np.ndarray]:
        """Every TT layer as the TT-SVD of the global one at ``rank``."""
        out = {}
        for layer, d in cores_per_layer(self._travelling).items():
            names = [f"{layer}.core_{k}" for k in range(d)]
            out.update(zip(names, truncate_layer([as_numpy(self._global[n]) for n in names], rank), strict=True))
        return out
