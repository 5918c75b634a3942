"""FedSA-LoRA (Guo et al., ICLR 2025): LoRA on every client, only the A matrices are shared.

A learns what is general across clients and is averaged by the server; B learns what is client-specific and
never leaves its node: each node keeps its own B in its Context state from round to round (in the simulation
and in deployment alike). The head travels and is averaged like A. A personalised method: each node's model is
the shared A and head with its own B, so it is evaluated on the nodes (federated evaluation on every node's dev
share, every round), and the server's central evaluation does not apply.
"""

from __future__ import annotations

from .lora import inject
from .registry import Method

METHODS = (
    Method("fedsa-lora", "lora", "FedSA-LoRA: LoRA A and B train, A and the head are shared; each node keeps its B",
           inject(local_b=True), lambda s, _: {**s.lora_a, **s.head}, local=r"\.lora_B\."),
)
