"""FedTT and FedTT+: tensor-train adapters (the paper's methods).

``fedtt``: every TT core (+ adapter biases when on), the head and, by default, the LayerNorm gains train and
travel every round. ``fedtt+``: the same adapters, but per round only the scheduled cores of every TT layer
(first, last and one intermediate core that advances) train and travel; nodes keep a copy of the rest.
"""

from __future__ import annotations

from ..adapters import add_tt_adapters
from .registry import Method, ReportShapes


def inject(model, cfg, resolved):
    return add_tt_adapters(model, resolved.adapter_config(cfg))


def _scheduled(shapes: ReportShapes, server_round: int) -> dict:
    """FedTT+'s uplink in ``server_round`` under the default cyclic schedule."""
    from strategies.schedules import CyclicSchedule, cores_per_layer, plan_for_round, trainable_names

    plan = plan_for_round(CyclicSchedule(), server_round, cores_per_layer(shapes.tt).values())
    return {n: shapes.tt[n] for n in trainable_names(list(shapes.tt), plan)}


METHODS = (
    Method("fedtt", "tt", "TT adapter cores (+ biases when on), LayerNorm gains and the head, every round",
           inject, lambda shapes, _: shapes.tt, tt_config=True),
    Method("fedtt+", "tt", "FedTT+: per round only the scheduled cores of every TT layer (and the rest of the "
                           "travelling tensors); frozen cores stay bit-identical on the server",
           inject, _scheduled, rounds="schedule", tt_config=True),
)
