"""FedTT / FedTT+ strategies on an in-process grid with numpy clients (no torch in the strategies)."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
)

from fedtt_flwr.inprocess import InProcessGrid
from strategies import (
    SYNC_KEY,
    CyclicSchedule,
    FedTT,
    FedTTPlus,
    FixedSchedule,
    RandomSchedule,
    decode_plan,
    make_schedule,
    receive_global,
    reply_content,
    round_trainable,
)

LAYERS = ["enc.0.adapter.down", "enc.0.adapter.up", "enc.1.adapter.down", "enc.1.adapter.up"]


def global_record(seed: int = 0) -> ArrayRecord:
    """Two blocks x two TT layers of 5 cores + bias, a head, and a backbone tensor that must never travel."""
    rng = np.random.default_rng(seed)
    arrays = {"backbone.embed.weight": rng.normal(size=(10, 4)).astype(np.float32)}
    for layer in LAYERS:
        for k in range(5):
            arrays[f"{layer}.core_{k}"] = rng.normal(size=(1 if k == 0 else 3, 4, 1 if k == 4 else 3)).astype(
                np.float32)
        arrays[f"{layer}.bias"] = rng.normal(size=(8,)).astype(np.float32)
    arrays["classifier.weight"] = rng.normal(size=(2, 8)).astype(np.float32)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def numpy_client(num_examples=lambda node: 10 * (node - 100), delta=lambda node: float(node - 100)):
    """Receives the global copy, 'trains' by adding a node-specific constant, replies the trained names in
    float32 whatever it received (as the real ClientApp does: its model is float32), packed when asked."""

    def app(msg: Message, context) -> Message:
        node = context.node_id
        received = receive_global(msg.content, context.state)
        if msg.metadata.message_type == "evaluate":
            context.state["seen"] = ConfigRecord({"names": list(received.keys())})
            return Message(RecordDict({"metrics": MetricRecord({"loss": 1.0, "num-examples": 5})}), reply_to=msg)
        names = round_trainable(msg.content)
        out = ArrayRecord({n: Array((received[n].numpy() + delta(node)).astype(np.float32)) for n in names})
        metrics = MetricRecord({"train-loss": 0.5, "num-examples": num_examples(node)})
        return Message(reply_content(msg.content, out, metrics), reply_to=msg)

    return app


def run(strategy, rounds=1, nodes=3, client=None, initial=None):
    grid = InProcessGrid(client or numpy_client(), nodes)
    initial = initial or global_record()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, train_config=ConfigRecord())
    return grid, initial, result


def test_only_adapter_tensors_travel_and_the_backbone_is_untouched():
    grid, initial, result = run(FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3)), rounds=2)
    for msg in grid.sent:
        for rec in msg.content.array_records.values():
            assert "backbone.embed.weight" not in rec
    assert np.array_equal(result.arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())
    assert list(result.arrays.keys()) == list(initial.keys())


def test_fedtt_average_matches_hand_computation():
    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    grid, initial, result = run(strategy, rounds=1)
    # nodes 101..103 add 1, 2, 3 with weights 10, 20, 30 -> weighted mean shift (10+40+90)/60
    shift = (10 * 1 + 20 * 2 + 30 * 3) / 60
    for name in initial:
        want = initial[name].numpy() + (shift if name != "backbone.embed.weight" else 0.0)
        assert np.allclose(result.arrays[name].numpy(), want, atol=1e-6), name
    stats = strategy.rounds[1]
    assert stats["clients"] == 3 and stats["replies"] == 3 and stats["rejected"] == 0
    sent = sum(a.numpy().nbytes for n, a in initial.items() if n != "backbone.embed.weight")
    assert stats["bytes_down"] >= 3 * sent and stats["bytes_up"] >= 3 * sent


def test_fedtt_plus_sends_only_scheduled_cores_and_keeps_frozen_cores_identical():
    strategy = FedTTPlus(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    grid, initial, result = run(strategy, rounds=1)
    train_msgs = [m for m in grid.sent if m.metadata.message_type == "train"]
    plan = decode_plan(train_msgs[0].content["config"]["fedtt-plan"])
    assert plan == {5: [0, 1, 4]}  # round 1 of the cyclic schedule: first, last, core 1
    for msg in train_msgs:
        names = set(msg.content["arrays"].keys())
        assert {n for n in names if "core_" in n} == {f"{layer}.core_{k}" for layer in LAYERS for k in (0, 1, 4)}
        assert all(f"{layer}.bias" in names for layer in LAYERS) and "classifier.weight" in names
    for layer in LAYERS:
        for k in (2, 3):
            name = f"{layer}.core_{k}"
            assert np.array_equal(result.arrays[name].numpy(), initial[name].numpy()), name
        assert not np.array_equal(result.arrays[f"{layer}.core_1"].numpy(), initial[f"{layer}.core_1"].numpy())


def test_fedtt_plus_uplink_is_smaller_and_schedule_covers_every_core():
    plain = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    run(plain, rounds=1)
    plus = FedTTPlus(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    _, initial, result = run(plus, rounds=3)
    assert plus.rounds[1]["bytes_up"] < plain.rounds[1]["bytes_up"]
    for layer in LAYERS:
        for k in range(5):
            name = f"{layer}.core_{k}"
            assert not np.array_equal(result.arrays[name].numpy(), initial[name].numpy()), f"{name} never trained"


def test_delta_sync_sends_only_changed_frozen_tensors_and_clients_stay_consistent():
    strategy = FedTTPlus(FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=1.0,
                                min_evaluate_nodes=2), schedule=CyclicSchedule())
    grid, initial, result = run(strategy, rounds=3, nodes=2)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    first, later = train[0], train[-1]
    assert len(first.content[SYNC_KEY]) == 2 * len(LAYERS)  # round 1: both frozen cores of each layer
    # round 3 trains cores {0,3,4}; since the last sync (evaluate of round 2) nothing frozen changed
    assert SYNC_KEY not in later.content
    assert strategy.rounds[3]["bytes_down"] < strategy.rounds[1]["bytes_down"]
    # every node's copy equals the server's global adapters after the final evaluate
    for ctx in grid.contexts.values():
        cache = ctx.state["fedtt-global"]
        for name in cache:
            assert np.array_equal(cache[name].numpy(), result.arrays[name].numpy()), name


def test_full_sync_mode_always_sends_the_frozen_tensors():
    strategy = FedTTPlus(FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0), sync="full")
    grid, _, _ = run(strategy, rounds=2, nodes=2)
    for m in grid.sent:
        assert len(m.content[SYNC_KEY]) == 2 * len(LAYERS)


@pytest.mark.parametrize("inner", [
    lambda: FedAdam(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, eta=0.1),
    lambda: FedYogi(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, eta=0.1),
    lambda: FedProx(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, proximal_mu=0.1),
    lambda: FedMedian(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
    lambda: FedTrimmedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, beta=0.34),
], ids=["fedadam", "fedyogi", "fedprox", "fedmedian", "fedtrimmedavg"])
@pytest.mark.parametrize("wrapper", [FedTT, FedTTPlus])
def test_composes_with_flower_strategies(inner, wrapper):
    strategy = wrapper(inner())
    _, initial, result = run(strategy, rounds=3)
    assert np.array_equal(result.arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())
    name = f"{LAYERS[0]}.core_0"
    assert not np.array_equal(result.arrays[name].numpy(), initial[name].numpy())
    if isinstance(strategy.inner, FedMedian | FedTrimmedAvg):  # +1, +2, +3 per round; median/trim: +2 a round
        assert np.allclose(result.arrays[name].numpy(), initial[name].numpy() + 6, atol=1e-5)


def test_fedadam_differs_from_fedavg():
    _, _, avg = run(FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0)), rounds=2)
    _, _, adam = run(FedTT(FedAdam(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, eta=0.5)),
                     rounds=2)
    name = f"{LAYERS[0]}.bias"
    assert not np.allclose(avg.arrays[name].numpy(), adam.arrays[name].numpy())


@pytest.mark.parametrize("wrapper", [FedTT, FedTTPlus])
def test_server_side_dp_wrapper_clips_and_noises_only_adapters(wrapper):
    dp = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
        noise_multiplier=0.5, clipping_norm=1.0, num_sampled_clients=3)
    _, initial, result = run(wrapper(dp), rounds=2)
    if wrapper is FedTTPlus:  # cores 0,1,4 trained in round 1 and 0,2,4 in round 2: core 3 never, bit-identical
        name = f"{LAYERS[0]}.core_3"
        assert np.array_equal(result.arrays[name].numpy(), initial[name].numpy())
    assert np.array_equal(result.arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())
    # without clipping every tensor would shift by exactly 2; clipping to norm 1 bounds the update
    update = np.concatenate([(result.arrays[n].numpy() - initial[n].numpy()).ravel()
                             for n in initial if n != "backbone.embed.weight"])
    assert not np.allclose(update, 2.0)


def test_client_side_dp_wrapper_with_fixedclipping_mod():
    from flwr.clientapp.mod import fixedclipping_mod

    client = numpy_client()

    def clipped(msg, ctx):
        return fixedclipping_mod(msg, ctx, client)

    dp = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
        noise_multiplier=0.0, clipping_norm=0.5, num_sampled_clients=3)
    _, initial, result = run(FedTT(dp), rounds=1, client=clipped)
    names = [n for n in initial if n != "backbone.embed.weight"]
    update = np.concatenate([(result.arrays[n].numpy() - initial[n].numpy()).ravel() for n in names])
    assert np.linalg.norm(update) <= 0.5 + 1e-4  # every client update was clipped to norm 0.5
    assert np.array_equal(result.arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())


def _nan(arrays, first):
    arrays[first] = Array(np.full(arrays[first].shape, np.nan, dtype=np.float32))


def _unknown(arrays, first):
    arrays["backbone.embed.weight"] = Array(np.zeros((10, 4), dtype=np.float32))


def _shape(arrays, first):
    arrays[first] = Array(np.zeros((2, 2), dtype=np.float32))


def _dtype(arrays, first):
    arrays[first] = Array(arrays[first].numpy().astype(np.float64))


def _missing(arrays, first):
    del arrays[first]


def _frozen_core(arrays, first):  # FedTT+: a core outside the round's plan (core 2 of 5 is frozen in round 1)
    arrays[f"{LAYERS[0]}.core_2"] = Array(np.zeros((3, 4, 3), dtype=np.float32))


@pytest.mark.parametrize(("corrupt", "wrapper", "reason"), [
    (_nan, FedTT, "NaN or Inf"), (_unknown, FedTT, "unknown"), (_shape, FedTT, "shape/dtype"),
    (_dtype, FedTT, "float64"), (_missing, FedTT, "missing"), (_frozen_core, FedTTPlus, "core_2"),
], ids=["nan", "unknown-name", "shape", "dtype", "missing", "fedtt+-frozen-core"])
def test_bad_replies_are_rejected_counted_and_never_averaged(corrupt, wrapper, reason, caplog):
    def bad_client(msg, ctx):
        reply = numpy_client()(msg, ctx)
        if ctx.node_id != 101:
            corrupt(reply.content["arrays"], f"{LAYERS[0]}.core_0")
        return reply

    strategy = wrapper(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    with caplog.at_level("WARNING"):
        _, initial, result = run(strategy, client=bad_client)
    assert strategy.rounds[1]["rejected"] == 2 and strategy.rounds[1]["replies"] == 1
    assert "node 102" in caplog.text and "node 103" in caplog.text and reason in caplog.text
    name = f"{LAYERS[0]}.core_0"
    assert np.allclose(result.arrays[name].numpy(), initial[name].numpy() + 1.0)  # node 101's update only
    assert np.array_equal(result.arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())


@pytest.mark.parametrize("claim", [0, -5, 1e12, float("nan"), None])
def test_replies_with_an_implausible_example_count_are_rejected(claim, caplog):
    def lying_client(msg, ctx):
        reply = numpy_client()(msg, ctx)
        if ctx.node_id != 101:
            if claim is None:
                del reply.content["metrics"]["num-examples"]
            else:
                reply.content["metrics"]["num-examples"] = claim
        return reply

    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    with caplog.at_level("WARNING"):
        _, initial, result = run(strategy, client=lying_client)
    assert strategy.rounds[1]["rejected"] == 2 and strategy.rounds[1]["replies"] == 1
    assert "num-examples" in caplog.text and "node 102" in caplog.text
    name = f"{LAYERS[0]}.core_0"
    assert np.allclose(result.arrays[name].numpy(), initial[name].numpy() + 1.0)  # node 101's update only
    assert np.array_equal(result.arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())


def test_schedules():
    cyc = CyclicSchedule()
    assert [cyc.cores(r, 5) for r in (1, 2, 3, 4)] == [[0, 1, 4], [0, 2, 4], [0, 3, 4], [0, 1, 4]]
    assert CyclicSchedule(num_middle=2).cores(1, 6) == [0, 1, 2, 5]
    assert cyc.cores(1, 2) == [0, 1]
    rnd = RandomSchedule(seed=3)
    assert rnd.cores(7, 6) == RandomSchedule(seed=3).cores(7, 6) and len(rnd.cores(7, 6)) == 3
    assert {tuple(rnd.cores(r, 6)) for r in range(1, 30)} != {tuple(rnd.cores(1, 6))}
    assert FixedSchedule([0, -1]).cores(9, 5) == [0, 4]
    assert make_schedule("fixed:0,2,-1").cores(1, 5) == [0, 2, 4]
    assert make_schedule("all").cores(1, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown schedule 'weekly'"):
        make_schedule("weekly")
    with pytest.raises(ValueError, match="out of range"):
        FixedSchedule([7]).cores(1, 5)
    with pytest.raises(ValueError, match="malformed FedTT\\+ core plan"):
        decode_plan("5:a,b")


def test_include_selects_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match="no tensor of the global ArrayRecord matches"):
        run(FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3), include=r"^nothing$"))


def test_strategies_do_not_import_torch():
    code = "import sys, strategies; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


def test_the_plug_in_example_runs_and_keeps_the_body_at_home(caplog):
    import torch
    from flwr.app import Context

    example = load_example()
    Net, client_app, server_app, to_record = example.Net, example.client_app, example.server_app, example.to_record

    grid = InProcessGrid(client_app, 3)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with caplog.at_level("WARNING"):
        server_app(grid, context)
    assert "FedTT: rejected" not in caplog.text and "FedTT: round" not in caplog.text  # FedAdam in FedTT+: all trained
    rounds = context.state["rounds"]
    assert list(rounds["replies"]) == [3, 3, 3] and list(rounds["rejected"]) == [0, 0, 0]
    final = context.state["final"]
    torch.manual_seed(0)
    initial = to_record(Net())
    assert np.array_equal(final["body.weight"].numpy(), initial["body.weight"].numpy())
    assert not np.array_equal(final["classifier.weight"].numpy(), initial["classifier.weight"].numpy())
    for msg in grid.sent:
        assert all(not n.startswith("body.") for rec in msg.content.array_records.values() for n in rec)


def load_example():
    """examples/plug_into_your_app.py by path: opacus installs a top-level package named `examples` too."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "plug_into_your_app.py"
    spec = importlib.util.spec_from_file_location("plug_into_your_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noisy_client(msg: Message, context) -> Message:
    """Adds node- and round-seeded noise to the round's tensors; replies packed when the server packed."""
    received = receive_global(msg.content, context.state)
    rnd = int(msg.content["config"]["server-round"])
    rng = np.random.default_rng(1000 * rnd + context.node_id)
    out = ArrayRecord({n: Array(received[n].numpy() + rng.standard_normal(received[n].shape).astype(np.float32))
                       for n in round_trainable(msg.content)})
    metrics = MetricRecord({"train-loss": 0.5, "num-examples": int(rng.integers(5, 50))})
    return Message(reply_content(msg.content, out, metrics), reply_to=msg)


@pytest.mark.parametrize("plus", [False, True])
def test_fast_fedavg_and_flat_packed_aggregation_are_bit_identical_to_flowers_fedavg(plus):
    from strategies import FastFedAvg

    def strategy(inner_cls, pack):
        inner = inner_cls(min_train_nodes=4, min_available_nodes=4, fraction_evaluate=0.0)
        return FedTTPlus(inner, pack=pack) if plus else FedTT(inner, pack=pack)

    results = {}
    for name, s in {"flower": strategy(FedAvg, False), "fast": strategy(FastFedAvg, False),
                    "fast packed (flat)": strategy(FastFedAvg, True)}.items():
        random.seed(0)  # Flower samples (and so orders) the nodes with `random`: the sum's order matters
        _, initial, result = run(s, rounds=3, nodes=4, client=noisy_client)
        results[name] = result.arrays
        assert all(s.rounds[r]["replies"] == 4 and s.rounds[r]["rejected"] == 0 for r in (1, 2, 3))
    ref = results["flower"]
    moved = [n for n in ref if not np.array_equal(ref[n].numpy(), initial[n].numpy())]
    assert len(moved) > 10  # training happened
    for name, arrays in results.items():
        assert list(arrays.keys()) == list(ref.keys())
        assert all(np.array_equal(arrays[n].numpy(), ref[n].numpy()) for n in ref), name


def test_a_bad_packed_reply_is_rejected_on_the_flat_path():
    from strategies import FastFedAvg, reply_arrays

    def client(msg, context):
        reply = noisy_client(msg, context)
        if context.node_id == 102:  # NaN in the flat array
            flat = reply.content["arrays"]["packed"].numpy().copy()
            flat[3] = np.nan
            reply.content["arrays"] = ArrayRecord({"packed": Array(flat)})
        if context.node_id == 103:  # one value short
            reply.content["arrays"] = reply_arrays(msg.content, ArrayRecord({"x": Array(np.ones(3, np.float32))}))
        return reply

    s = FedTT(FastFedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0), pack=True)
    run(s, rounds=1, nodes=3, client=client)
    assert s.rounds[1]["rejected"] == 2 and s.rounds[1]["replies"] == 1
