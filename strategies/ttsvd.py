"""Averaging TT layers as the matrices they represent, then back to cores by TT-SVD (numpy only).

A TT weight is multilinear in its cores, so the mean of the clients' cores is not the mean of their
matrices; when a round moves every core a lot (AdamW moves each entry by up to ``lr`` per step, the
same order as the entries themselves) the core mean can be far from every client's model.
``average="matrices"`` in :class:`strategies.fedtt.FedTT` instead rebuilds each client's tensor, takes
the weighted mean (the FedAvg of the matrices) and truncates it back to the layer's TT ranks with
TT-SVD (Oseledets 2011: quasi-optimal at the given ranks). The cores that travel keep their shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def tt_full(cores: Sequence[np.ndarray]) -> np.ndarray:
    """The full tensor ``[n_1, ..., n_d]`` of cores shaped ``(r_{k-1}, n_k, r_k)``."""
    out = np.asarray(cores[0], dtype=np.float64).reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        out = (out @ np.asarray(core, dtype=np.float64).reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    return out.reshape([c.shape[1] for c in cores])


def tt_svd(tensor: np.ndarray, ranks: Sequence[int]) -> list[np.ndarray]:
    """Cores of exactly the TT ranks ``ranks`` (``(1, r_1, ..., r_{d-1}, 1)``) approximating ``tensor``.

    Left-to-right truncated SVDs, then the norm spread evenly over the cores (the product is unchanged)
    so that no core is much larger than the others, as at initialisation. Where a boundary's rank is
    below ``r_k`` (a tiny mode) the missing slices are zero."""
    shape = tensor.shape
    if len(ranks) != len(shape) + 1 or ranks[0] != 1 or ranks[-1] != 1:
        raise ValueError(f"ranks {list(ranks)} do not fit a tensor of order {len(shape)}")
    cores, rest = [], np.asarray(tensor, dtype=np.float64).reshape(1, -1)
    for k, n in enumerate(shape[:-1]):
        mat = rest.reshape(ranks[k] * n, -1)
        u, s, vt = np.linalg.svd(mat, full_matrices=False)
        keep = min(ranks[k + 1], s.size)
        core = np.zeros((ranks[k] * n, ranks[k + 1]))
        core[:, :keep] = u[:, :keep]
        cores.append(core.reshape(ranks[k], n, ranks[k + 1]))
        rest = np.zeros((ranks[k + 1], vt.shape[1]))
        rest[:keep] = s[:keep, None] * vt[:keep]
    cores.append(rest.reshape(ranks[-2], shape[-1], 1))
    norms = np.array([np.linalg.norm(c) for c in cores])
    if np.all(norms > 0):
        target = np.exp(np.mean(np.log(norms)))
        cores = [c * (target / n) for c, n in zip(cores, norms, strict=True)]
    return cores


def average_tt_layers(
    replies: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], layers: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """``{layer.core_k: core}`` for every TT layer in ``layers`` (name -> number of cores): the TT-SVD of
    the weighted mean of the replies' rebuilt tensors, at the ranks and dtype of the replies' cores."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out: dict[str, np.ndarray] = {}
    for layer, d in layers.items():
        names = [f"{layer}.core_{k}" for k in range(d)]
        mean = sum(wi * tt_full([rep[n] for n in names]) for wi, rep in zip(w, replies, strict=True))
        first = [np.asarray(replies[0][n]) for n in names]
        ranks = [1] + [c.shape[-1] for c in first]
        for name, core, ref in zip(names, tt_svd(mean, ranks), first, strict=True):
            out[name] = core.astype(ref.dtype)
    return out
