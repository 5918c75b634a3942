"""Virtual clients: a cross-device federation of N clients served by a few SuperNodes.

Flower keeps per-node bookkeeping for every SuperNode of a simulation (a context each, and a delivery loop that
visits every node a few times a second), so one SuperNode per client makes the framework's share of a round grow
with N. Here the N clients are data partitions: each round the server samples ``per_round`` of them without
replacement and names one in each message; the SuperNode that receives it trains that partition. Clients hold no
state between rounds (a SuperNode serves a different client every round), so methods that keep per-client state
(DP accounting, personal tensors, per-node ranks, wire error feedback) do not run this way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: the message-config key naming the partition a message trains
PARTITION_KEY = "fedtt-partition-id"


@dataclass(frozen=True)
class VirtualClients:
    """``num`` clients, ``per_round`` of them sampled each round (seeded by ``seed`` and the round)."""

    num: int
    per_round: int
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.per_round <= self.num:
            raise ValueError(f"virtual clients: {self.per_round} per round of {self.num} clients; need 1 <= per "
                             "round <= clients")

    def sample(self, server_round: int, count: int) -> list[int]:
        """The partitions of a round's ``count`` messages: ``per_round`` distinct ones (``count`` is the number of
        SuperNodes sampled; more than ``per_round`` is trimmed by the caller, fewer is an error)."""
        if count < self.per_round:
            raise ValueError(f"virtual clients: {self.per_round} clients per round need as many SuperNodes, "
                             f"{count} sampled (start the simulation with at least {self.per_round})")
        # random.sample over a range is O(per_round): no list of N ids is built
        return random.Random(self.seed * 1_000_003 + server_round).sample(range(self.num), self.per_round)
