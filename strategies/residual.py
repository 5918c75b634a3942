"""Exact aggregation of LoRA: FedEx-LoRA and FLoRA (numpy and Flower only; no torch).

The mean of the clients' LoRA products is not the product of the mean factors: ``mean_i(B_i A_i) != mean(B)
mean(A)``. Both methods make the global model the exact weighted mean of the clients' models, with a dense,
frozen ``residual`` beside every LoRA-adapted matrix (``W = W0 + residual + s B A``, ``s`` = alpha / rank):

- **FedEx-LoRA** (Singhal et al., ACL 2025) averages A and B as FedAvg does and adds the aggregation error
  ``s (sum_i p_i B_i A_i - mean(B) mean(A))`` to the residual.
- **FLoRA** (Wang et al., NeurIPS 2024) stacks the clients' modules, i.e. adds ``s sum_i p_i B_i A_i`` (the
  product of the stacked ``[p_i B_i]`` and ``[A_i]``) to the residual and starts every round from a fresh LoRA:
  A re-drawn (peft's init, seeded by round), B zero.

The residual trains nowhere and never goes up; it goes down to every node in every round it changed (the
round's ``sync`` record, as FedTT+'s frozen cores): a dense matrix per adapted layer, which the byte counts
include. (The papers send the increment as stacked low-rank factors to stateful clients; here nodes may be
stateless, so they receive the residual itself.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from .fedtt import FedTT, Include
from .hetero import NodeRanks
from .packing import as_numpy

RESIDUAL = ".lora_residual"
A_MARK, B_MARK = ".lora_A.", ".lora_B."


def lora_modules(names: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """``{module: (A name, B name, residual name)}`` for every adapted module whose three tensors are in
    ``names`` (peft names: ``<module>.lora_A.<adapter>.weight``)."""
    names = list(names)
    residuals = {n[: -len(RESIDUAL)]: n for n in names if n.endswith(RESIDUAL)}
    out = {}
    for module, residual in residuals.items():
        a = [n for n in names if n.startswith(module + A_MARK)]
        b = [n for n in names if n.startswith(module + B_MARK)]
        if len(a) != 1 or len(b) != 1:
            raise ValueError(f"{module}: expected one LoRA A and one B beside its residual, got {a} and {b}")
        out[module] = (a[0], b[0], residual)
    if not out:
        raise ValueError("no LoRA residual among the travelling tensors: the model needs the method's residuals")
    return out


class FedLoRAResidual(NodeRanks, FedTT):
    """FedEx-LoRA (``mode="fedex"``) or FLoRA (``mode="flora"``) on top of :class:`FedTT`'s exchange, validation
    and accounting. ``scaling``: LoRA's alpha / rank (of the global LoRA); ``seed``: FLoRA's per-round
    re-initialisation of A. ``inner`` must average (FedAvg or FedProx): the residual makes the global model the
    clients' mean. ``node_ranks`` (FLoRA only): nodes train LoRA of their own ranks (learned by a ``query``,
    :class:`strategies.hetero.NodeRanks`); a node of rank r gets the first r rows of the round's fresh A and r
    zero columns of B, its product enters the residual with its own scaling alpha / r, which is how FLoRA stacks
    modules of different ranks."""

    def __init__(self, inner: Strategy | None = None, include: Include = None, pack: bool = False,
                 mode: Literal["fedex", "flora"] = "fedex", scaling: float = 2.0, seed: int = 0,
                 sync: Literal["full", "delta"] = "full", node_ranks: bool = False,
                 query_timeout: float = 600.0) -> None:
        FedTT.__init__(self, inner, include=include, pack=pack)
        if mode not in ("fedex", "flora"):
            raise ValueError(f"mode must be 'fedex' or 'flora', got {mode!r}")
        if node_ranks and mode != "flora":
            raise ValueError("per-node LoRA ranks: FLoRA only (FedEx-LoRA averages A and B, which needs one shape)")
        self.mode, self.scaling, self.seed, self.sync = mode, float(scaling), seed, sync
        self.per_node = node_ranks
        self._init_ranks(query_timeout)
        self.flat_replies = not node_ranks
        self._replies: list[tuple[float, float, dict[str, np.ndarray]]] = []

    @property
    def wire_feedback(self) -> bool:
        """FLoRA re-draws its factors every round: a residual of last round's would be added to new ones."""
        return self.mode == "fedex" and super().wire_feedback

    @property
    def global_rank(self) -> int:
        a_name = next(iter(lora_modules(self._travelling).values()))[0]
        return int(self._global[a_name].shape[0])

    def tailor(self, rank: int) -> dict[str, np.ndarray]:
        """The round's fresh LoRA at ``rank``: A's first rows, B's first (zero) columns."""
        out = {}
        for a_name, b_name, _ in lora_modules(self._travelling).values():
            out[a_name] = as_numpy(self._global[a_name])[:rank]
            out[b_name] = as_numpy(self._global[b_name])[:, :rank]
        return out


    def select(self, server_round: int, names: list[str]) -> tuple[list[str], str | None, str]:
        train = [n for n in names if not n.endswith(RESIDUAL)]
        return train, None, f"{self.mode}: {len(train)} trained, {len(names) - len(train)} residuals"

    def _post_aggregate(self, agg: ArrayRecord, accepted: list[Message], flat: bool) -> ArrayRecord:
        factors = [n for a, b, _ in lora_modules(self._travelling).values() for n in (a, b)]
        top = self.global_rank
        self._replies = [(self.reply_weight(m), self.scaling * top / self.node_rank.get(m.metadata.src_node_id, top),
                          self.reply_tensors(m, factors, flat)) for m in accepted]
        return agg

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._replies = []
        before, versions = self._global, dict(self._version)
        merged, metrics = super().aggregate_train(server_round, replies)
        if merged is None or not self._replies:
            return merged, metrics
        weights = np.array([w for w, _, _ in self._replies], dtype=np.float64)
        weights /= weights.sum()
        updated = dict(merged.items())
        rng = np.random.default_rng([self.seed, server_round])
        for a_name, b_name, r_name in lora_modules(self._travelling).values():
            stacked = sum(p * s * (t[b_name].astype(np.float64) @ t[a_name].astype(np.float64))
                          for p, (_, s, t) in zip(weights, self._replies, strict=True))
            a, b = (as_float64(merged[n]) for n in (a_name, b_name))
            step = stacked - self.scaling * (b @ a) if self.mode == "fedex" else stacked
            residual = as_float64(merged[r_name]) + step
            kept = residual.astype(np.dtype(merged[r_name].dtype))  # what the global state will hold
            if not np.isfinite(kept).all() or (self.wire.lossy and not self.wire.carries(residual)):
                self._global, self._version = before, versions  # never merged: it could not be used or sent
                return self._skip(self._round(server_round), server_round,
                                  f"{r_name}: the residual overflowed (float32, or the wire's {self.wire.precision})")
            updated[r_name] = Array(np.ascontiguousarray(kept))
            if self.mode == "flora":  # a fresh LoRA for the next round: peft's init (A ~ U(+-1/sqrt(in)), B = 0)
                bound = 1.0 / np.sqrt(a.shape[1])
                updated[a_name] = _like(rng.uniform(-bound, bound, size=a.shape), merged[a_name])
                updated[b_name] = _like(np.zeros(b.shape), merged[b_name])
            self._version[r_name] += 1
        self._global = ArrayRecord(updated)
        self._replies = []
        return self._global, metrics


def as_float64(array: Array) -> np.ndarray:
    return as_numpy(array).astype(np.float64)


def _like(values: np.ndarray, ref: Array) -> Array:
    return Array(np.ascontiguousarray(values.astype(np.dtype(ref.dtype))))
