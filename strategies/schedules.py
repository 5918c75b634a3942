"""FedTT+ freezing schedules: which cores of each TT layer train (and travel) in a round.

A schedule maps ``(server_round, num_cores)`` to the sorted core indices that train. The server
announces the round's choice to clients as a compact string (``encode_plan``), e.g. ``"5:0,2,4;6:0,3,5"``
(TT layers with 5 cores train cores 0, 2, 4; layers with 6 cores train 0, 3, 5), so every client
freezes the same cores and aggregation stays consistent. Pure Python: no torch.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence

CORE_RE = re.compile(r"^(?P<layer>.+)\.core_(?P<index>\d+)$")


class Schedule:
    """Base class. Subclasses implement :meth:`cores`."""

    name = "base"

    def cores(self, server_round: int, num_cores: int) -> list[int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CyclicSchedule(Schedule):
    """First and last core every round, plus ``num_middle`` intermediate cores that advance by one each
    round, so every core trains within ``ceil((d-2) / num_middle)`` rounds (the FedTT+ default)."""

    name = "cyclic"

    def __init__(self, num_middle: int = 1) -> None:
        if num_middle < 1:
            raise ValueError(f"num_middle must be >= 1, got {num_middle}")
        self.num_middle = num_middle

    def cores(self, server_round: int, num_cores: int) -> list[int]:
        middle = list(range(1, num_cores - 1))
        if not middle:
            return list(range(num_cores))
        k = min(self.num_middle, len(middle))
        start = ((server_round - 1) * k) % len(middle)
        chosen = {middle[(start + i) % len(middle)] for i in range(k)}
        return sorted({0, num_cores - 1} | chosen)

    def __repr__(self) -> str:
        return f"CyclicSchedule(num_middle={self.num_middle})"


class RandomSchedule(Schedule):
    """First and last core, plus ``num_middle`` intermediate cores drawn at random per round (seeded:
    the same seed and round give the same draw on any machine)."""

    name = "random"

    def __init__(self, seed: int = 0, num_middle: int = 1) -> None:
        if num_middle < 1:
            raise ValueError(f"num_middle must be >= 1, got {num_middle}")
        self.seed, self.num_middle = seed, num_middle

    def cores(self, server_round: int, num_cores: int) -> list[int]:
        middle = list(range(1, num_cores - 1))
        rng = random.Random(f"{self.seed}:{server_round}:{num_cores}")
        chosen = rng.sample(middle, min(self.num_middle, len(middle)))
        return sorted({0, num_cores - 1, *chosen})

    def __repr__(self) -> str:
        return f"RandomSchedule(seed={self.seed}, num_middle={self.num_middle})"


class FixedSchedule(Schedule):
    """The same core indices every round; negative indices count from the end (``-1`` = last)."""

    name = "fixed"

    def __init__(self, indices: Sequence[int]) -> None:
        if not indices:
            raise ValueError("FixedSchedule needs at least one core index")
        self.indices = tuple(int(i) for i in indices)

    def cores(self, server_round: int, num_cores: int) -> list[int]:
        out = set()
        for i in self.indices:
            j = i + num_cores if i < 0 else i
            if not 0 <= j < num_cores:
                raise ValueError(f"FixedSchedule index {i} is out of range for a TT layer with {num_cores} cores")
            out.add(j)
        return sorted(out)

    def __repr__(self) -> str:
        return f"FixedSchedule(indices={list(self.indices)})"


class AllSchedule(Schedule):
    """Every core, every round: plain FedTT."""

    name = "all"

    def cores(self, server_round: int, num_cores: int) -> list[int]:
        return list(range(num_cores))


def make_schedule(spec: str, seed: int = 0, num_middle: int = 1) -> Schedule:
    """``cyclic`` | ``random`` | ``all`` | ``fixed:0,2,-1``."""
    if spec == "cyclic":
        return CyclicSchedule(num_middle)
    if spec == "random":
        return RandomSchedule(seed, num_middle)
    if spec == "all":
        return AllSchedule()
    if spec.startswith("fixed:"):
        try:
            return FixedSchedule([int(x) for x in spec[len("fixed:"):].split(",") if x.strip()])
        except ValueError as exc:
            raise ValueError(f"bad fixed schedule {spec!r}: {exc}") from None
    raise ValueError(f"unknown schedule {spec!r}: use cyclic, random, all or fixed:I,J,...")


def cores_per_layer(names: Iterable[str]) -> dict[str, int]:
    """TT layer name -> number of cores, from tensor names ending in ``.core_<k>``."""
    counts: dict[str, int] = {}
    for name in names:
        m = CORE_RE.match(name)
        if m:
            counts[m["layer"]] = max(counts.get(m["layer"], 0), int(m["index"]) + 1)
    return counts


def plan_for_round(schedule: Schedule, server_round: int, core_counts: Iterable[int]) -> dict[int, list[int]]:
    """``{num_cores: trainable indices}`` for every TT layer size present."""
    return {d: schedule.cores(server_round, d) for d in sorted(set(core_counts))}


def encode_plan(plan: Mapping[int, Sequence[int]]) -> str:
    return ";".join(f"{d}:{','.join(map(str, idx))}" for d, idx in sorted(plan.items()))


def decode_plan(text: str) -> dict[int, list[int]]:
    """Inverse of :func:`encode_plan`; a malformed string is a ValueError naming it."""
    plan: dict[int, list[int]] = {}
    try:
        for part in filter(None, text.split(";")):
            d, idx = part.split(":")
            plan[int(d)] = [int(i) for i in idx.split(",") if i]
    except ValueError:
        raise ValueError(f"malformed FedTT+ core plan {text!r} (expected like '5:0,2,4;6:0,3,5')") from None
    return plan


def trainable_names(names: Iterable[str], plan: Mapping[int, Sequence[int]]) -> list[str]:
    """The tensor names that train under ``plan``: the planned cores of every TT layer, and every
    tensor that is not a TT core (biases, head), in the order given."""
    names = list(names)
    counts = cores_per_layer(names)
    out = []
    for name in names:
        m = CORE_RE.match(name)
        if m is None:
            out.append(name)
            continue
        d = counts[m["layer"]]
        if d not in plan:
            raise ValueError(f"the core plan has no entry for TT layers with {d} cores ({name})")
        if int(m["index"]) in plan[d]:
            out.append(name)
    return out
