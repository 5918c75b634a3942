"""TT-SVD and FedTT's ``average="matrices"``: the global TT layer is the mean of the clients' matrices."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from test_strategies import LAYERS, run

from fedtt_flwr.config import RunConfig
from strategies import FastFedAvg, FedTT, receive_global, reply_content, round_trainable
from strategies.ttsvd import average_tt_layers, tt_full, tt_svd


def random_cores(shape, rank, rng):
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    return [rng.normal(size=(ranks[k], n, ranks[k + 1])) for k, n in enumerate(shape)], ranks


def test_tt_svd_recovers_a_tt_tensor_at_its_ranks_with_balanced_cores():
    cores, ranks = random_cores((6, 8, 8, 8, 8), 5, np.random.default_rng(0))
    tensor = tt_full(cores)
    out = tt_svd(tensor, ranks)
    assert [c.shape for c in out] == [c.shape for c in cores]
    assert np.allclose(tt_full(out), tensor, rtol=1e-9, atol=1e-9 * np.abs(tensor).max())
    norms = [np.linalg.norm(c) for c in out]
    assert max(norms) / min(norms) == pytest.approx(1.0)


def test_tt_svd_pads_a_boundary_whose_rank_is_below_the_layers():
    cores, ranks = random_cores((2, 3, 4), 5, np.random.default_rng(1))  # boundary 1 has rank <= 2
    out = tt_svd(tt_full(cores), ranks)
    assert [c.shape for c in out] == [c.shape for c in cores]
    assert np.allclose(tt_full(out), tt_full(cores))
    with pytest.raises(ValueError, match="do not fit"):
        tt_svd(tt_full(cores), [1, 5, 1])


def test_matrix_average_is_exact_where_core_average_is_not():
    rng = np.random.default_rng(2)
    base, ranks = random_cores((4, 4, 4), 3, rng)
    clients = [[c + 0.5 * rng.normal(size=c.shape) for c in base] for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    want = sum(w * tt_full(c) for w, c in zip(weights, clients, strict=True)) / 6
    replies = [{f"l.core_{k}": c[k] for k in range(3)} for c in clients]
    # the mean of 3 TT tensors of ranks 3 has ranks <= 9: exact at ranks 9, not at 3 (truncated)
    wide = [[np.pad(c, ((0, 9 - c.shape[0] if k else 0), (0, 0), (0, 9 - c.shape[2] if k < 2 else 0)))
             for k, c in enumerate(cl)] for cl in clients]
    wide_replies = [{f"l.core_{k}": c[k] for k in range(3)} for c in wide]
    exact = average_tt_layers(wide_replies, weights, {"l": 3})
    assert np.allclose(tt_full([exact[f"l.core_{k}"] for k in range(3)]), want)
    core_mean = tt_full([sum(w * c[k] for w, c in zip(weights, clients, strict=True)) / 6 for k in range(3)])
    assert not np.allclose(core_mean, want, atol=1e-2)
    truncated = average_tt_layers(replies, weights, {"l": 3})
    approx = tt_full([truncated[f"l.core_{k}"] for k in range(3)])
    assert np.linalg.norm(approx - want) < np.linalg.norm(core_mean - want)


def last_core_client(seen: dict):
    """Moves only the last core of every TT layer (and the head): the clients' matrices then share their
    first cores, so their mean is a TT at the same ranks and the TT-SVD must give it exactly."""

    def app(msg: Message, context) -> Message:
        received = receive_global(msg.content, context.state)
        rng = np.random.default_rng(context.node_id)
        out = {}
        for n in round_trainable(msg.content):
            a = received[n].numpy()
            moves = n.endswith(".core_4") or n.startswith("classifier.")
            out[n] = (a + rng.normal(size=a.shape).astype(a.dtype)) if moves else a.copy()
        seen[context.node_id] = (out, context.node_id - 100)
        metrics = MetricRecord({"num-examples": context.node_id - 100})
        trained = ArrayRecord({n: Array(a) for n, a in out.items()})
        return Message(reply_content(msg.content, trained, metrics), reply_to=msg)

    return app


@pytest.mark.parametrize("pack", [False, True])
def test_fedtt_matrices_gives_the_weighted_mean_matrix_and_fedavg_elsewhere(pack):
    seen: dict = {}
    strategy = FedTT(FastFedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0), pack=pack,
                     average="matrices")
    _, initial, result = run(strategy, rounds=1, client=last_core_client(seen))
    total = sum(w for _, w in seen.values())
    for layer in LAYERS:
        names = [f"{layer}.core_{k}" for k in range(5)]
        want = sum(w * tt_full([out[n] for n in names]) for out, w in seen.values()) / total
        got = tt_full([result.arrays[n].numpy() for n in names])
        assert np.allclose(got, want, atol=1e-4 * np.abs(want).max()), layer
        assert all(result.arrays[n].dtype == initial[n].dtype for n in names)
    head = sum(w * out["classifier.weight"] for out, w in seen.values()) / total
    assert np.allclose(result.arrays["classifier.weight"].numpy(), head, atol=1e-6)
    assert np.array_equal(result.arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())


def test_matrices_option_is_checked():
    with pytest.raises(ValueError, match="average must be"):
        FedTT(average="mean")
    with pytest.raises(ValueError, match="tt-average=matrices needs method fedtt and server-opt fedavg"):
        RunConfig.from_flower({"tt-average": "matrices", "server-opt": "fedavgm"})
    with pytest.raises(ValueError, match="tt-average=matrices needs method fedtt"):
        RunConfig.from_flower({"tt-average": "matrices", "method": "fedtt+"})
