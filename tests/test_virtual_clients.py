"""Virtual clients: N partitions served by a few SuperNodes, the server naming each message's partition."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client_app.app import app as client_app
from fedtt_flwr.client import _cached_share, client_data, message_partition
from fedtt_flwr.config import RunConfig
from fedtt_flwr.inprocess import InProcessGrid
from fedtt_flwr.preflight import check_aggregation, check_clients, preflight
from server_app.app import app as server_app
from strategies.precision import FEEDBACK_KEY
from strategies.virtual import PARTITION_KEY, VirtualClients


def test_a_round_samples_distinct_clients_reproducibly():
    v = VirtualClients(100_000, 10, seed=3)
    first = v.sample(1, 12)
    assert len(set(first)) == 10 and all(0 <= p < 100_000 for p in first)
    assert v.sample(1, 10) == first and v.sample(2, 10) != first
    with pytest.raises(ValueError, match="10 clients per round need as many SuperNodes, 4 sampled"):
        v.sample(1, 4)


def test_virtual_clients_train_the_partitions_the_server_names(tmp_path, tiny_model_dir, tiny_sst2_dir):
    seen = []

    def recording(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        seen.append((msg, reply, context))
        return reply

    run_config = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
                  "run-name": "virtual", "num-server-rounds": 2, "local-steps": 2, "batch-size": 4, "max-length": 16,
                  "lr": 0.01, "partition": "iid", "virtual-clients": 20, "fraction-train": 0.15, "min-clients": 2,
                  "wire-precision": "int8", "fraction-evaluate": 1.0}
    grid = InProcessGrid(recording, 4, run_config)  # 4 SuperNodes; 3 of the 20 clients per round
    _cached_share.cache_clear()
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    lines = [json.loads(x) for x in (tmp_path / "virtual" / "metrics.jsonl").read_text().splitlines()]
    assert [x["clients"] for x in lines[1:]] == [3, 3] and [x["replies"] for x in lines[1:]] == [3, 3]
    cfg = RunConfig.from_flower(run_config)
    named = defaultdict(list)
    evaluated = [(m, r) for m, r, _ in seen if m.metadata.message_type == "evaluate"]
    # federated evaluation stays on the SuperNodes' own dev shards (4 of them)
    assert len(evaluated) == 8 and all(PARTITION_KEY not in m.content["config"] and not r.has_error()
                                       for m, r in evaluated)
    assert "fed_accuracy" in lines[-1]
    for msg, reply, context in seen:
        if msg.metadata.message_type == "evaluate":
            continue
        config = msg.content["config"]
        named[config["server-round"]].append(config[PARTITION_KEY])
        assert config[FEEDBACK_KEY] is False and not reply.has_error()  # no residual kept for another client
        assert "fedtt-wire-residual" not in context.state
        # the client trained the named partition of 20 (12 rows each), not its node's of 4 (60)
        assert reply.content["metrics"]["num-examples"] == len(client_data(cfg, config[PARTITION_KEY], 20, "train"))
        assert reply.content["metrics"]["num-examples"] == 12
    assert set(named) == {1, 2} and all(len(set(ids)) == 3 for ids in named.values())
    # a virtual client's partition is not cached (another one each call): only the 4 nodes' dev shards are
    assert _cached_share.cache_info().currsize == 4
    assert sorted(named[1]) == sorted(VirtualClients(20, 3, cfg.seed).sample(1, 3))


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize("named", [None, -1, 20, True, "3", 2.0])
def test_a_node_refuses_a_partition_outside_the_federation(named):
    cfg = RunConfig.from_flower({"virtual-clients": 20, "min-clients": 2})
    config = ConfigRecord({"server-round": 1} if named is None else {"server-round": 1, PARTITION_KEY: named})
    msg = Message(RecordDict({"config": config}), dst_node_id=1, message_type="train")
    node = _context({"partition-id": 0, "num-partitions": 4})
    with pytest.raises(ValueError, match=r"virtual-clients = 20: the server's message names partition .*0\.\.19"):
        message_partition(msg, node, cfg, 0, 4)
    assert message_partition(msg, node, RunConfig.from_flower({}), 1, 4) == (1, 4)  # off: the node's own


def test_a_node_with_its_own_data_refuses_virtual_clients(tmp_path):
    cfg = RunConfig.from_flower({"virtual-clients": 20, "min-clients": 2})
    msg = Message(RecordDict({"config": ConfigRecord({PARTITION_KEY: 3})}), dst_node_id=1, message_type="train")
    with pytest.raises(ValueError, match="this node trains its own data .* set virtual-clients = 0"):
        message_partition(msg, _context({"data-dir": str(tmp_path)}), cfg, 0, 1)
    with pytest.raises(ValueError, match="virtual-clients = 20 is for simulations"):  # `deploy run`'s checks
        preflight(cfg, 3, on_this_machine=False)


@pytest.mark.parametrize("overrides, why", [
    ({"dp": "epsilon", "dp-epsilon": 8.0}, "not with dp"),
    ({"method": "fedsa-lora"}, "not with method fedsa-lora"),
    ({"node-ranks": "2,4"}, "not with node-ranks"),
    ({"min-clients": 30}, "fewer than min-clients = 30"),
])
def test_stateful_settings_are_refused_with_virtual_clients(overrides, why):
    with pytest.raises(ValueError, match=why):
        RunConfig.from_flower({"virtual-clients": 20, **overrides})


def test_the_preflight_wants_enough_supernodes_and_rows(tiny_sst2_dir):
    cfg = RunConfig.from_flower({"virtual-clients": 100, "fraction-train": 0.1, "min-clients": 2, "partition": "iid",
                                 "data-dir": str(tiny_sst2_dir)})
    with pytest.raises(ValueError, match=r"samples 10 clients .* start at least 10 SuperNodes \(--num-clients\), "
                                         "not 4"):
        check_clients(cfg, 4)
    check_clients(cfg, 10)  # 240 rows for 100 clients
    many = cfg.model_copy(update={"virtual_clients": 1000, "fraction_train": 0.01})
    with pytest.raises(ValueError, match="virtual-clients = 1000: the training split has 240 rows"):
        check_clients(many, 10)


def test_trimmed_mean_is_checked_against_the_clients_a_round_samples():
    """FedTrimmedAvg's replies per round are the virtual clients sampled, not the SuperNodes."""
    trimmed = {"server-opt": "fedtrimmedavg", "trim-beta": 0.2, "min-clients": 2}
    check_aggregation(RunConfig.from_flower({**trimmed, "virtual-clients": 1000, "fraction-train": 0.01}), 10)
    with pytest.raises(ValueError, match="trims nothing from the 2 replies"):  # 20 SuperNodes, 2 clients a round
        check_aggregation(RunConfig.from_flower({**trimmed, "virtual-clients": 4, "fraction-train": 0.5}), 20)
