"""Tensor-train (TT) linear layer: a weight matrix stored as a chain of small 3-way cores.

A matrix ``W`` of shape ``(in, out)`` is viewed as a tensor of shape ``[n_1, ..., n_d]`` with
``prod(n_k) = in * out`` (row-major reshape) and stored as cores ``G_k`` of shape
``(r_{k-1}, n_k, r_k)``, ``r_0 = r_d = 1``. See docs/tensorized-adapters.md for the math.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

ForwardMode = Literal["auto", "rebuild", "contract"]

#: LoRETTA's shapes for a bottleneck of 64 (keyed by the hidden size). The same list serves the
#: down (h x 64) and the up (64 x h) projection.
PRESET_SHAPES: dict[int, tuple[int, ...]] = {
    768: (8, 8, 12, 8, 8),
    1024: (4, 8, 8, 8, 8, 4),
    4096: (16, 16, 16, 4, 4, 4),
    5120: (5, 8, 8, 16, 8, 8),
}
PRESET_BOTTLENECK = 64
_MAX_FACTOR = 16


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def balanced_factors(n: int) -> list[int]:
    """Split ``n`` into ``ceil(log16 n)`` factors that are as equal as possible.

    Greedy and deterministic: prime factors, largest first, each go to the factor whose product is
    currently smallest (lowest index on ties). 384 -> [6, 8, 8], 64 -> [8, 8], 576 -> [12, 6, 8].
    """
    if n < 1:
        raise ValueError(f"cannot factor {n}: a TT mode size must be a positive integer")
    if n == 1:
        return [1]
    count = max(1, math.ceil(math.log(n) / math.log(_MAX_FACTOR) - 1e-9))
    bins = [1] * count
    for p in sorted(_prime_factors(n), reverse=True):
        bins[bins.index(min(bins))] *= p
    return bins


def tt_shape(in_features: int, out_features: int) -> tuple[int, ...]:
    """The TT shape used for an ``(in, out)`` matrix when none is given.

    LoRETTA's preset when ``{in, out} == {h, 64}`` for a preset hidden size ``h``; otherwise the
    balanced factors of ``in`` followed by those of ``out`` (so the split between input and output
    modes is aligned, which the ``contract`` forward needs).
    """
    pair = {in_features, out_features}
    if PRESET_BOTTLENECK in pair:
        other = max(pair) if len(pair) == 2 else PRESET_BOTTLENECK
        if other in PRESET_SHAPES:
            return PRESET_SHAPES[other]
    return tuple(balanced_factors(in_features) + balanced_factors(out_features))


def tt_num_params(shape: Sequence[int], rank: int) -> int:
    """Number of core entries: ``n_1 r + sum_{k=2}^{d-1} r n_k r + r n_d`` (no bias)."""
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(shape))


def _input_split(shape: Sequence[int], in_features: int) -> int | None:
    """Number of leading modes whose product is ``in_features`` (None when no prefix matches)."""
    prod = 1
    for k, n in enumerate(shape):
        prod *= n
        if prod == in_features:
            return k + 1
        if prod > in_features:
            return None
    return None


class TTLinear(nn.Module):
    """``y = x @ W + b`` with ``W`` (in x out) held in tensor-train format.

    Each core is a direct parameter ``core_k`` (Opacus' functorch per-sample gradients are wrong for
    cores inside a child ParameterList). The math runs in fp32 even inside autocast regions.

    ``forward_mode="rebuild"`` forms ``W`` from the cores and does one matmul; ``"contract"`` never forms
    ``W``: it multiplies ``x`` by the input-side and then the output-side half of the chain (needs a
    shape whose leading modes multiply to ``in``). ``"auto"`` (default) takes ``contract`` where the
    shape allows it, as it measured faster, and ``rebuild`` elsewhere.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        shape: Sequence[int] | None = None,
        rank: int = 5,
        bias: bool = True,
        forward_mode: ForwardMode = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"TTLinear needs positive sizes, got in={in_features}, out={out_features}")
        if rank < 1:
            raise ValueError(f"TT rank must be >= 1, got {rank}")
        shape = tuple(int(n) for n in (shape if shape is not None else tt_shape(in_features, out_features)))
        if len(shape) < 2 or any(n < 1 for n in shape) or math.prod(shape) != in_features * out_features:
            raise ValueError(
                f"TT shape {list(shape)} does not fit a {in_features}x{out_features} matrix: it needs at "
                f"least 2 positive modes whose product is {in_features * out_features}"
            )
        if forward_mode not in ("auto", "rebuild", "contract"):
            raise ValueError(f"forward_mode must be 'auto', 'rebuild' or 'contract', got {forward_mode!r}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.shape = shape
        self.ranks = (1,) + (rank,) * (len(shape) - 1) + (1,)
        self._split = _input_split(shape, in_features)
        if forward_mode == "contract" and self._split is None:
            raise ValueError(
                f"forward_mode='contract' needs leading modes of {list(shape)} that multiply to "
                f"in_features={in_features}"
            )
        if forward_mode == "auto":  # contract measured ~20% faster per adapter (benchmarks/tt_forward.py)
            forward_mode = "rebuild" if self._split is None else "contract"
        self.forward_mode: ForwardMode = forward_mode
        for k, n in enumerate(shape):
            core = torch.empty(self.ranks[k], n, self.ranks[k + 1], device=device)
            self.register_parameter(f"core_{k}", nn.Parameter(core))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None
        self.reset_parameters()

    @property
    def cores(self) -> list[nn.Parameter]:
        return [getattr(self, f"core_{k}") for k in range(len(self.shape))]

    @property
    def num_cores(self) -> int:
        return len(self.shape)

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        """LoRETTA init: entries of the rebuilt ``W`` have std ``sqrt(1 / (in + out))`` (or ``std``),
        spread evenly over the cores so that no core is much smaller than the others."""
        sigma = std if std is not None else math.sqrt(1.0 / (self.in_features + self.out_features))
        per_core = sigma ** (1.0 / self.num_cores)
        for k, core in enumerate(self.cores):
            core.normal_().mul_(per_core / math.sqrt(self.ranks[k + 1]))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.out_features)
            self.bias.uniform_(-bound, bound)

    @staticmethod
    def _chain(cores: Sequence[torch.Tensor]) -> torch.Tensor:
        """Contract cores left to right into a ``(r_0 * n_1 * ... * n_k, r_k)`` matrix."""
        out = cores[0].reshape(-1, cores[0].shape[-1])
        for core in cores[1:]:
            out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
        return out

    def to_dense(self) -> torch.Tensor:
        """The ``(in, out)`` matrix, in fp32."""
        with torch.autocast(device_type=self.core_0.device.type, enabled=False):
            cores = [c.float() for c in self.cores]
            return self._chain(cores).reshape(self.in_features, self.out_features)

    def _contract(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W`` without forming ``W``: with the input modes first, ``W = A @ B`` where ``A``
        (in x r) contracts the input-side cores and ``B`` (r x out) the output-side ones, so the cost
        is ``N (in + out) r`` instead of ``N in out``."""
        cores = [c.float() for c in self.cores]
        split = self._split
        left = self._chain(cores[:split]).reshape(self.in_features, self.ranks[split])
        if split == len(cores):
            return x @ left
        right = self._chain(cores[split:]).reshape(self.ranks[split], self.out_features)
        return (x @ left) @ right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"TTLinear expects last dim {self.in_features}, got input of shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            x2 = x.reshape(-1, self.in_features).float()
            y = self._contract(x2) if self.forward_mode == "contract" else x2 @ self.to_dense()
            if self.bias is not None:
                y = y + self.bias.float()
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, shape={list(self.shape)}, "
            f"rank={self.rank}, bias={self.bias is not None}, forward_mode={self.forward_mode}"
        )
