"""The method registry: what a PEFT method is, declared once per method.

A :class:`Method` says what it injects into a model, which tensors train and travel in a round (all of them,
a FedTT+ core schedule, alternating groups), which trained tensors stay on the node (a personalised method),
whether nodes keep state between rounds, and what one client sends up per round (the byte report). Method
modules are imported by name on first use (``FAMILIES``), so this module imports none of them and the
configuration can check a method name without importing torch, peft or the adapters.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

    from ..config import RunConfig
    from .build import Resolved

#: One line per method module (``fedtt_flwr/methods/<name>.py``, each with a ``METHODS`` tuple), in the order
#: the methods are listed.
FAMILIES = (
    "tt_adapter",
    "dense_adapter",
    "lora",
    "fedsa_lora",
)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ReportShapes:
    """The tensor shapes a byte report needs for one model (no weights): the TT adapters' travelling state, the
    dense adapter's, LoRA's A and B, and the model's own dense head (what the LoRA methods train)."""

    tt: dict[str, Shape]
    dense: dict[str, Shape]
    lora_a: dict[str, Shape]
    lora_b: dict[str, Shape]
    head: dict[str, Shape]


@dataclass(frozen=True)
class Method:
    """One PEFT method, everything about it in one place.

    ``inject(model, cfg, resolved)`` adds the method's modules, freezes the rest and stamps
    ``model.fedtt_state_names`` (the tensors that travel) and, for a personalised method,
    ``model.fedtt_local_names`` (trained, never sent: they live in the node's Context state).
    ``uplink(shapes, server_round)`` is what one client sends up in a round, for the byte report.
    """

    name: str
    family: str
    summary: str
    inject: Callable[[nn.Module, RunConfig, Resolved], nn.Module]
    uplink: Callable[[ReportShapes, int], dict[str, Shape]]
    #: what trains and travels per round: every travelling tensor, the FedTT+ core schedule, the
    #: ``groups`` (regexes) taking turns, or LoRA with a server-set residual (``extra["residual"]``: its rule)
    rounds: Literal["all", "schedule", "alternate", "residual"] = "all"
    groups: tuple[str, ...] = ()
    #: regex of trained tensors that stay on each node (personalised), e.g. FedSA-LoRA's B
    local: str | None = None
    #: the adapter is a TT/dense adapter (its TTAdapterConfig is saved with adapter files)
    tt_config: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def personal(self) -> bool:
        """Part of the model is each node's own: evaluated where it lives, not centrally."""
        return self.local is not None

    @property
    def stateful(self) -> bool:
        """Nodes keep state between rounds: a copy of the frozen tensors (schedules, alternation) or their own
        local tensors."""
        return self.rounds != "all" or self.personal

    def is_local(self, name: str) -> bool:
        return self.local is not None and re.search(self.local, name) is not None


_registry: dict[str, Method] = {}


def _methods() -> dict[str, Method]:
    if not _registry:
        found = {}
        for family in FAMILIES:
            for method in importlib.import_module(f"{__package__}.{family}").METHODS:
                if method.name in found:
                    raise ValueError(f"method {method.name!r} is registered twice ({family})")
                found[method.name] = method
        _registry.update(found)
    return _registry


def method_names() -> tuple[str, ...]:
    return tuple(_methods())


def get_method(name: str) -> Method:
    methods = _methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(methods)}")
    return methods[name]


def all_methods() -> tuple[Method, ...]:
    return tuple(_methods().values())
