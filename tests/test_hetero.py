"""Clients with different TT ranks (strategies.hetero): truncation down, padding up, exact mixed-rank rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedtt_flwr.inprocess import InProcessGrid
from strategies import named_arrays, receive_global, reply_content, round_trainable
from strategies.hetero import FedTTHetero
from strategies.ttsvd import tt_full

R, MODES = 4, (4, 3, 5)
CORES = [f"ad.core_{k}" for k in range(3)]


def global_record(seed=0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    ranks = [1, R, R, 1]
    rec = {n: Array(rng.normal(size=(ranks[k], m, ranks[k + 1])).astype(np.float32))
           for k, (n, m) in enumerate(zip(CORES, MODES, strict=True))}
    rec["head.weight"] = Array(rng.normal(size=(2, 3)).astype(np.float32))
    rec["backbone.w"] = Array(np.ones(3, np.float32))
    return ArrayRecord(rec)


def reference_truncation(full: np.ndarray, rank: int) -> np.ndarray:
    """TT-SVD written out independently: sequential truncated SVDs, the rebuilt tensor."""
    shape, ranks = full.shape, [1] + [rank] * (full.ndim - 1) + [1]
    cores, rest = [], full.reshape(1, -1)
    for k, n in enumerate(shape[:-1]):
        u, s, vt = np.linalg.svd(rest.reshape(ranks[k] * n, -1), full_matrices=False)
        keep = min(ranks[k + 1], s.size)
        cores.append(u[:, :keep].reshape(ranks[k], n, keep))
        ranks[k + 1] = keep
        rest = s[:keep, None] * vt[:keep]
    cores.append(rest.reshape(ranks[-2], shape[-1], 1))
    return tt_full(cores)


def client(ranks: dict[int, int], trained: dict, lie: dict | None = None):
    """Node ``nid`` of rank ``ranks[nid]``: answers the rank query (or ``lie[nid]``), 'trains' by adding noise
    to what it received and replies at the shapes it got (float32, as a real ClientApp)."""
    def app(msg: Message, context) -> Message:
        nid = context.node_id
        if msg.metadata.message_type == "query":
            said = (lie or {}).get(nid, ranks[nid])
            return Message(RecordDict({"m": MetricRecord({"adapter-rank": said})}), reply_to=msg)
        received = receive_global(msg.content)
        if msg.metadata.message_type == "evaluate":
            return Message(RecordDict({"metrics": MetricRecord({"loss": 1.0, "num-examples": 5})}), reply_to=msg)
        rng = np.random.default_rng(nid)
        out = {n: (received[n].numpy() + 0.1 * rng.normal(size=received[n].shape)).astype(np.float32)
               for n in round_trainable(msg.content)}
        trained[nid] = (10 * (nid - 100), out, {n: received[n].numpy() for n in received})
        return Message(reply_content(msg.content, ArrayRecord({k: Array(v) for k, v in out.items()}),
                                     MetricRecord({"train-loss": 0.5, "num-examples": 10 * (nid - 100)})),
                       reply_to=msg)
    return app


def run(pack, ranks, lie=None, rounds=1):
    trained: dict = {}
    strategy = FedTTHetero(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
                           include=[*CORES, "head.weight"], pack=pack)
    grid = InProcessGrid(client(ranks, trained, lie), 3)
    initial = global_record()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, train_config=ConfigRecord())
    return strategy, grid, initial, result, trained


@pytest.mark.parametrize("pack", [False, True])
def test_each_node_gets_the_best_tt_of_its_rank_and_the_mixed_round_is_exact(pack):
    ranks = {101: 2, 102: R, 103: 3}
    strategy, grid, initial, result, trained = run(pack, ranks)
    full = tt_full([initial[n].numpy() for n in CORES])
    sent = {m.metadata.dst_node_id: named_arrays(m.content) for m in grid.sent if m.metadata.message_type == "train"}
    for nid, rank in ranks.items():
        cores = [sent[nid][n].numpy() for n in CORES]
        assert [c.shape for c in cores] == [(1, 4, rank), (rank, 3, rank), (rank, 5, 1)]
        np.testing.assert_allclose(tt_full(cores), reference_truncation(full, rank), rtol=1e-4, atol=1e-4)
    down = {nid: m for m in grid.sent if m.metadata.message_type == "train" for nid in [m.metadata.dst_node_id]}
    sizes = {nid: sum(len(a.data) for rec in down[nid].content.array_records.values() for a in rec.values())
             for nid in ranks}
    assert sizes[101] < sizes[103] < sizes[102]  # bytes follow the rank
    assert strategy.rounds[1]["replies"] == 3 and strategy.rounds[1]["rejected"] == 0
    total = sum(n for n, _, _ in trained.values())
    mean = sum(n / total * tt_full([t[c].astype(np.float64) for c in CORES]) for n, t, _ in trained.values())
    got = [result.arrays[n].numpy() for n in CORES]
    assert [c.shape for c in got] == [initial[n].numpy().shape for n in CORES] and got[0].dtype == np.float32
    np.testing.assert_allclose(tt_full(got), reference_truncation(mean, R), rtol=1e-4, atol=1e-4)
    head = sum(n / total * t["head.weight"].astype(np.float64) for n, t, _ in trained.values())
    np.testing.assert_allclose(result.arrays["head.weight"].numpy(), head, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pack", [False, True])
def test_a_reply_at_another_rank_than_sent_is_rejected(pack):
    """Node 101 says rank 2 and gets rank-2 cores; a reply at another rank is a hostile or broken one."""
    ranks = {101: 2, 102: R, 103: R}
    trained: dict = {}
    honest = client(ranks, trained)

    def app(msg, context):
        reply = honest(msg, context)
        if context.node_id == 101 and msg.metadata.message_type == "train":
            full = global_record()
            names = round_trainable(msg.content)
            reply = Message(reply_content(msg.content, ArrayRecord({n: full[n] for n in names}),
                                          MetricRecord({"train-loss": 0.5, "num-examples": 10})), reply_to=msg)
        return reply

    strategy = FedTTHetero(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
                           include=[*CORES, "head.weight"], pack=pack)
    strategy.start(grid=InProcessGrid(app, 3), initial_arrays=global_record(), num_rounds=1,
                   train_config=ConfigRecord())
    assert strategy.rounds[1]["replies"] == 2 and strategy.rounds[1]["rejected"] == 1


def test_a_node_that_gives_no_valid_rank_gets_the_global_one():
    strategy, grid, *_ = run(False, {101: 2, 102: R, 103: 3}, lie={101: 99, 103: 0})
    assert strategy.node_rank == {101: R, 102: R, 103: R}
    assert strategy.rounds[1]["replies"] == 3


def test_node_ranks_settings_are_checked():
    from fedtt_flwr.config import RunConfig, node_rank

    with pytest.raises(ValueError, match="node-ranks '2,9'"):
        RunConfig(node_ranks="2,9", rank=5)
    with pytest.raises(ValueError, match="needs method fedtt"):
        RunConfig(node_ranks="2,5", method="fedtt+")
    cfg = RunConfig(node_ranks="2,5,3", rank=5)
    assert [node_rank({"partition-id": i}, cfg) for i in range(4)] == [2, 5, 3, 2]
    nodes = RunConfig(node_ranks="nodes", rank=5)
    assert node_rank({"rank": 3}, nodes) == 3 and node_rank({}, nodes) == 5
    with pytest.raises(ValueError, match="node config 'rank'"):
        node_rank({"rank": 6}, nodes)
    with pytest.raises(ValueError, match="set node-ranks = 'nodes'"):
        node_rank({"rank": 3}, RunConfig())


def test_a_federated_run_with_mixed_ranks(tmp_path, tiny_model_dir, tiny_sst2_dir):
    from fedtt_flwr.inprocess import run_inprocess

    out = {}
    for name, ranks in (("mixed", "2,5,3"), ("same", "")):
        run_inprocess({"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 2,
                       "local-steps": 2, "max-length": 16, "output-dir": str(tmp_path), "run-name": name,
                       "node-ranks": ranks, "fraction-evaluate": 1.0}, num_nodes=3)
        out[name] = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [(x["replies"], x["errors"], x["rejected"]) for x in out["mixed"][1:]] == [(3, 0, 0), (3, 0, 0)]
    assert out["mixed"][1]["bytes_up"] < out["same"][1]["bytes_up"]  # two of three nodes below rank 5
    assert 0 <= out["mixed"][-1]["fed_accuracy"] <= 1


def test_a_node_that_answers_late_sits_out_and_is_asked_again():
    """Node 101's first rank query fails (a slow start): it is left out of round 1, not given the global rank for
    the run; asked again in round 2, it trains at its rank. Queries go to the nodes actually sampled."""
    ranks, trained, failed, asked = {101: 2, 102: R, 103: 3}, {}, [], []
    honest = client(ranks, trained)

    def app(msg, context):
        if msg.metadata.message_type == "query":
            asked.append(context.node_id)
            if context.node_id == 101 and not failed:
                failed.append(1)
                raise RuntimeError("not ready yet")
        return honest(msg, context)

    strategy = FedTTHetero(FedAvg(min_train_nodes=2, min_available_nodes=3, fraction_evaluate=0.0),
                           include=[*CORES, "head.weight"])
    strategy.start(grid=InProcessGrid(app, 3), initial_arrays=global_record(), num_rounds=2,
                   train_config=ConfigRecord())
    assert [(strategy.rounds[r]["replies"], strategy.rounds[r].get("errors", 0)) for r in (1, 2)] == [(2, 0), (3, 0)]
    assert strategy.node_rank == ranks and asked.count(101) == 2
