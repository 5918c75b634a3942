"""Lower-precision transport (float16, bfloat16, int8 with per-block scales): what travels, what the server
rebuilds, error feedback, and replies that lie about their precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedtt_flwr.inprocess import InProcessGrid
from strategies import FedTT, FedTTPlus, WireFormat, receive_global, reply_content, round_trainable
from strategies.precision import PRECISION_KEY, SCALES
from strategies.protocol import RESIDUAL_KEY
from tests.test_strategies import global_record

LOSSY = ["float16", "bfloat16", "int8"]


def _values(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=n) * np.exp(rng.normal(size=n))).astype(np.float32)


def test_each_format_rounds_as_documented():
    x = _values()
    half = WireFormat("float16").round_trip(x)
    np.testing.assert_array_equal(half, x.astype(np.float16).astype(np.float32))
    brain = WireFormat("bfloat16").round_trip(x)  # round to nearest even, as torch does
    np.testing.assert_array_equal(brain, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert WireFormat("bfloat16").encode(x)["packed"].dtype == np.uint16
    wire = WireFormat("int8", 64)
    arrays = wire.encode(x)
    assert arrays["packed"].dtype == np.int8 and arrays[SCALES].shape == (16,)  # ceil(1000 / 64) blocks
    scales = np.repeat(arrays[SCALES], 64)[: x.size]
    assert (np.abs(wire.decode(arrays) - x) <= scales / 2 + 1e-7).all()  # at most half a step, per block
    np.testing.assert_array_equal(WireFormat().round_trip(x), x)
    zeros = np.zeros(10, np.float32)
    np.testing.assert_array_equal(wire.round_trip(zeros), zeros)  # an all-zero block: scale 0, no NaN


def test_bad_formats_and_unrepresentable_values_are_clear_errors():
    with pytest.raises(ValueError, match="one of float32, float16, bfloat16, int8"):
        WireFormat("int4")
    with pytest.raises(ValueError, match="wire block"):
        WireFormat("int8", 0)
    with pytest.raises(ValueError, match="needs its block size"):
        WireFormat.parse("int8")
    with pytest.raises(ValueError, match="only int8 takes a block size"):
        WireFormat.parse("float16:4")
    assert WireFormat.parse("int8:32") == WireFormat("int8", 32) and WireFormat.parse("bfloat16").tag == "bfloat16"
    with pytest.raises(ValueError, match="float16 cannot carry 1e"):
        WireFormat("float16").encode(np.array([1e5], np.float32))


def update_client(step: dict[int, float], log: dict | None = None, feedback: bool = True, big: str | None = None):
    """Receives, 'trains' by adding a node's step to every value (and 1.0 to tensor ``big``), replies float32
    through the protocol (in the announced precision, keeping its residual in its Context state when
    ``feedback``)."""

    def app(msg: Message, context) -> Message:
        received = receive_global(msg.content, context.state)
        if msg.metadata.message_type == "evaluate":
            return Message(RecordDict({"metrics": MetricRecord({"loss": 1.0, "num-examples": 5})}), reply_to=msg)
        names = round_trainable(msg.content)
        out = ArrayRecord({n: Array((received[n].numpy() + step[context.node_id] + (n == big)).astype(np.float32))
                           for n in names})
        if log is not None:
            log.setdefault(context.node_id, []).append({n: received[n].numpy() for n in names})
        metrics = MetricRecord({"train-loss": 0.5, "num-examples": 10})
        state = context.state if feedback else None
        return Message(reply_content(msg.content, out, metrics, state=state), reply_to=msg)

    return app


def run(wire: WireFormat, steps: dict[int, float], rounds: int = 1, plus: bool = False, feedback: bool = True,
        log: dict | None = None, big: str | None = None):
    cls = FedTTPlus if plus else FedTT
    strategy = cls(FedAvg(min_train_nodes=len(steps), min_available_nodes=len(steps), fraction_evaluate=0.0),
                   pack=True)
    strategy.wire = wire
    grid = InProcessGrid(update_client(steps, log, feedback, big), len(steps))
    initial = global_record()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, train_config=ConfigRecord())
    return strategy, grid, initial, result


@pytest.mark.parametrize("precision", LOSSY)
def test_the_server_adds_the_decoded_updates_to_its_float32_global(precision):
    """One round: every node got the global in the lossy format and replies its update; the new global is the old
    float32 one plus the mean decoded update, in float32, and the downlink's rounding is not in it."""
    wire = WireFormat(precision, 16)
    steps = {101: 0.01, 102: -0.03, 103: 0.05}
    strategy, grid, initial, result = run(wire, steps)
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all(m.content["config"][PRECISION_KEY] == wire.tag for m in sent)
    assert sent[0].content["arrays"]["packed"].dtype == str(wire.value_dtype)
    names = [n for n in initial if n != "backbone.embed.weight"]
    for n in names:
        got = result.arrays[n].numpy()
        assert got.dtype == np.float32
        old = initial[n].numpy()
        # each node's update is (what it received + step) - what it received: the step, rounded in the format
        expected = old + np.mean([wire.round_trip(np.full(old.size, s, np.float32)) for s in steps.values()], axis=0
                                 ).reshape(old.shape)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.arrays["backbone.embed.weight"].numpy(),
                                  initial["backbone.embed.weight"].numpy())
    assert strategy.rounds[1]["rejected"] == 0


def test_bytes_counted_are_those_sent_and_shrink_with_the_precision():
    up = {}
    for precision in ["float32", *LOSSY]:
        strategy, grid, _, _ = run(WireFormat(precision), {101: 0.01, 102: 0.02})
        up[precision] = strategy.rounds[1]["bytes_up"]
        down = [m for m in grid.sent if m.metadata.message_type == "train"]
        assert strategy.rounds[1]["bytes_down"] == sum(
            r.count_bytes() for m in down for r in m.content.array_records.values()) + sum(
            len(k) + len(v) for m in down for k, v in m.content["config"].items()
            if k.startswith("fedtt-layout:") or k == PRECISION_KEY)  # what packing and the format add
    assert up["float16"] == up["bfloat16"] < 0.6 * up["float32"]
    assert up["int8"] < 0.4 * up["float32"]


def test_error_feedback_sends_what_rounding_dropped_and_without_it_small_updates_are_lost():
    """Every update adds 1.0 to the head and 0.003 to everything else; in one int8 block the step is 1/127, so
    0.003 rounds to zero. With feedback the residual builds up until it crosses a step: the sum sent tracks the
    sum of the updates to within a step. Without, the small values never move."""
    wire = WireFormat("int8", 1 << 20)  # one block for the whole record
    rounds, small, head = 6, "enc.0.adapter.down.core_0", "classifier.weight"
    moved = {}
    for feedback in (True, False):
        strategy, grid, initial, result = run(wire, {101: 0.003, 102: 0.003}, rounds=rounds, feedback=feedback,
                                              big=head)
        moved[feedback] = result.arrays[small].numpy() - initial[small].numpy()
        np.testing.assert_allclose(result.arrays[head].numpy() - initial[head].numpy(), rounds * 1.003, atol=0.01)
        if feedback:
            residual = grid.contexts[101].state[RESIDUAL_KEY][small].numpy()
            assert residual.dtype == np.float32 and np.abs(residual).max() <= 1.003 / 127 / 2 + 1e-6
        else:
            assert RESIDUAL_KEY not in grid.contexts[101].state
    np.testing.assert_allclose(moved[True], 0.003 * rounds, atol=1.003 / 127)
    np.testing.assert_array_equal(moved[False], 0.0)


@pytest.mark.parametrize("precision", LOSSY)
def test_fedtt_plus_with_delta_sync_keeps_clients_consistent_in_a_lossy_format(precision):
    """FedTT+ (cores frozen by the schedule, sync="delta"): over several rounds every node's copy of the global stays
    within the format's rounding of the server's float32 global."""
    log: dict = {}
    strategy, grid, initial, result = run(WireFormat(precision), {101: 0.01, 102: -0.02}, rounds=4, plus=True, log=log)
    assert all(strategy.rounds[r]["rejected"] == 0 and strategy.rounds[r]["trainable"] < 30 for r in range(1, 5))
    tol = {"float16": 2e-3, "bfloat16": 2e-2, "int8": 5e-2}[precision]
    for n in result.arrays:
        assert result.arrays[n].numpy().dtype == np.float32
    for nid in (101, 102):
        copy = receive_global(RecordDict(), grid.contexts[nid].state)  # the node's cached copy, as it stands
        for n in copy:
            np.testing.assert_allclose(copy[n].numpy(), strategy._global[n].numpy(), atol=tol * 4)


def _lossy_reply(msg: Message, corrupt) -> Message:
    names = round_trainable(msg.content)
    received = receive_global(msg.content)
    out = ArrayRecord({n: Array(received[n].numpy() + 0.01) for n in names})
    content = reply_content(msg.content, out, MetricRecord({"num-examples": 10}))
    corrupt(content)
    return Message(content, reply_to=msg)


def _as_float32(content):  # the values sent as float32 instead of the announced int8
    arrays = content["arrays"]
    content["arrays"] = ArrayRecord({"packed": Array(arrays["packed"].numpy().astype(np.float32)),
                                     SCALES: arrays[SCALES]})


def _nan_scale(content):
    scales = content["arrays"][SCALES].numpy().copy()
    scales[0] = np.nan
    content["arrays"] = ArrayRecord({"packed": content["arrays"]["packed"], SCALES: Array(scales)})


def _huge_scale(content):  # finite wire values that decode far beyond the value bound
    scales = np.full_like(content["arrays"][SCALES].numpy(), 1e30)
    content["arrays"] = ArrayRecord({"packed": content["arrays"]["packed"], SCALES: Array(scales)})


def _no_scales(content):
    content["arrays"] = ArrayRecord({"packed": content["arrays"]["packed"]})


def _short(content):
    content["arrays"] = ArrayRecord({"packed": Array(content["arrays"]["packed"].numpy()[:-1]),
                                     SCALES: content["arrays"][SCALES]})


@pytest.mark.parametrize("corrupt, reason", [(_as_float32, "shape/dtype"), (_nan_scale, "NaN or Inf"),
                                             (_huge_scale, "above the bound"), (_no_scales, "tensor names differ"),
                                             (_short, "shape/dtype")])
def test_a_lying_lossy_reply_is_rejected_and_the_global_stays_float32(corrupt, reason, caplog):
    """Node 101 sends a reply that does not decode to bounded values in the announced format; it is rejected with
    its reason, the others are averaged, and the global keeps its dtypes."""
    def app(msg: Message, context) -> Message:
        if msg.metadata.message_type != "train":
            return Message(RecordDict({"metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)
        return _lossy_reply(msg, corrupt if context.node_id == 101 else (lambda c: None))

    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0), pack=True)
    strategy.wire = WireFormat("int8", 16)
    grid = InProcessGrid(app, 3)
    initial = global_record()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1, train_config=ConfigRecord())
    assert strategy.rounds[1]["rejected"] == 1 and strategy.rounds[1]["replies"] == 2
    assert any(reason in r.getMessage() and "node 101" in r.getMessage() for r in caplog.records)
    for n in initial:
        assert result.arrays[n].numpy().dtype == np.float32
        assert np.isfinite(result.arrays[n].numpy()).all()


def test_a_lossy_format_without_packing_is_a_clear_error():
    strategy = FedTT(FedAvg(min_train_nodes=2, min_available_nodes=2), pack=False)
    strategy.wire = WireFormat("float16")
    with pytest.raises(ValueError, match="needs packed messages"):
        strategy.configure_train(1, global_record(), ConfigRecord(), InProcessGrid(update_client({}), 2))


@pytest.mark.parametrize("precision", LOSSY)
def test_mixed_tt_ranks_in_a_lossy_format(precision):
    """Heterogeneous ranks: each node's update is added to the cores *it* was sent (truncated to its rank)."""
    from strategies.hetero import FedTTHetero
    from tests.test_hetero import CORES, client
    from tests.test_hetero import global_record as hetero_record

    ranks, trained = {101: 2, 102: 4, 103: 3}, {}
    strategy = FedTTHetero(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
                           include=[*CORES, "head.weight"], pack=True)
    strategy.wire = WireFormat(precision, 8)
    grid = InProcessGrid(client(ranks, trained), 3)
    result = strategy.start(grid=grid, initial_arrays=hetero_record(), num_rounds=2, train_config=ConfigRecord())
    assert all(strategy.rounds[r]["replies"] == 3 and strategy.rounds[r]["rejected"] == 0 for r in (1, 2))
    assert all(result.arrays[n].numpy().dtype == np.float32 for n in result.arrays)


def test_a_run_in_int8_sends_what_the_params_report_says(tmp_path, tiny_model_dir, tiny_sst2_dir, capsys):
    """The ClientApp and ServerApp in int8 (with error feedback): the adapters learn, stay float32, and the uplink per
    client-round equals `fedtt-flwr params --wire-precision int8`."""
    from safetensors.numpy import load_file

    from fedtt_flwr.cli import main
    from fedtt_flwr.inprocess import run_inprocess

    run_inprocess({"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 2,
                   "local-steps": 2, "max-length": 16, "output-dir": str(tmp_path), "run-name": "int8",
                   "wire-precision": "int8", "wire-block": 32, "min-clients": 3}, num_nodes=3)
    lines = [json.loads(x) for x in (tmp_path / "int8" / "metrics.jsonl").read_text().splitlines()]
    assert all(x["replies"] == 3 and x.get("rejected", 0) == 0 for x in lines[1:])
    assert main(["params", "--model", str(tiny_model_dir), "--train-layernorm", "auto", "--wire-precision", "int8",
                 "--wire-block", "32"]) == 0
    report = json.loads(capsys.readouterr().out)["methods_packed"]["fedtt"]["bytes_up_per_round"]
    assert all(x["bytes_up"] == 3 * report for x in lines[1:])
    adapter = load_file(str(tmp_path / "int8" / "adapter.safetensors"))
    assert all(v.dtype == np.float32 for v in adapter.values())


def test_a_lossy_format_with_pack_arrays_off_is_a_config_error():
    from fedtt_flwr.config import RunConfig

    with pytest.raises(ValueError, match="wire-precision float16 applies to packed messages"):
        RunConfig.from_flower({"wire-precision": "float16", "pack-arrays": False})


# Found by an adversarial review: each pins a way a client, or a node's own divergence, could crash, stall or fool
# the server in a lossy format.
HEAD = "classifier.weight"


def _metrics() -> MetricRecord:
    return MetricRecord({"train-loss": 0.5, "num-examples": 10})


def _eval_reply(msg: Message) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"loss": 1.0, "num-examples": 5})}), reply_to=msg)


def test_float16_a_client_cannot_push_the_global_past_what_float16_carries():
    """Node 101 replies, every round, the largest update float16 can carry (65,504) for the head; each reply is
    accepted (finite, within max_abs); the averaged head passes 65,504 after a few rounds and the server's next
    downlink cannot encode it. Expected: the run goes on (the offending reply or round rejected/skipped)."""

    def app(msg: Message, context) -> Message:
        if msg.metadata.message_type != "train":
            return _eval_reply(msg)
        received = receive_global(msg.content, context.state)
        names = round_trainable(msg.content)
        out = {}
        for n in names:
            values = received[n].numpy().astype(np.float32)
            if context.node_id == 101 and n == HEAD:
                values = values + np.float32(65000.0)
            out[n] = Array(values)
        return Message(reply_content(msg.content, ArrayRecord(out), _metrics()), reply_to=msg)

    strategy = FedTT(FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0), pack=True)
    strategy.wire = WireFormat("float16")
    grid = InProcessGrid(app, 2)
    # must not raise: a client's replies must never end the run
    result = strategy.start(grid=grid, initial_arrays=global_record(), num_rounds=4, train_config=ConfigRecord())
    assert all(result.arrays[n].numpy().dtype == np.float32 for n in result.arrays)
    assert np.abs(result.arrays[HEAD].numpy()).max() <= 65504
    assert any(strategy.rounds[r].get("skipped") or strategy.rounds[r]["rejected"] for r in range(1, 5))


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "int8"])
def test_one_nan_update_does_not_poison_the_error_feedback_residual(precision):
    def app(msg: Message, context) -> Message:
        if msg.metadata.message_type != "train":
            return _eval_reply(msg)
        received = receive_global(msg.content)
        names = round_trainable(msg.content)
        rnd = int(msg.content["config"]["server-round"])
        out = {}
        for n in names:
            values = received[n].numpy().astype(np.float32) + np.float32(0.01)
            if context.node_id == 101 and rnd == 1 and n == HEAD:
                values = values.copy()
                values.flat[0] = np.nan  # one bad step in round 1 only
            out[n] = Array(values)
        return Message(reply_content(msg.content, ArrayRecord(out), _metrics(), state=context.state), reply_to=msg)

    strategy = FedTT(FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0), pack=True)
    strategy.wire = WireFormat(precision, 16)
    grid = InProcessGrid(app, 2)
    strategy.start(grid=grid, initial_arrays=global_record(), num_rounds=3, train_config=ConfigRecord())
    assert strategy.rounds[1]["rejected"] == 1  # the NaN reply itself: rightly rejected
    assert strategy.rounds[2]["rejected"] == 0 and strategy.rounds[3]["rejected"] == 0, \
        "the node's healthy replies of rounds 2 and 3 are rejected because of round 1's residual"
    residual = grid.contexts[101].state[RESIDUAL_KEY][HEAD].numpy()
    assert np.isfinite(residual).all(), "the node keeps a NaN residual"


def test_bfloat16_keeps_nan_a_nan():
    nans = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FFF8000], dtype=np.uint32).view(np.float32)
    assert np.isnan(nans).all()
    out = WireFormat("bfloat16").round_trip(nans)
    assert np.isnan(out).all(), f"NaN encoded as {out}"


def test_float16_fedex_residual_out_of_range_skips_the_round():
    from strategies.residual import FedLoRAResidual
    from tests.test_exact_lora import HEAD as LORA_HEAD
    from tests.test_exact_lora import RES, A, B
    from tests.test_exact_lora import global_record as lora_record

    def app(msg: Message, context) -> Message:
        if msg.metadata.message_type != "train":
            return _eval_reply(msg)
        received = receive_global(msg.content, context.state)
        out = {}
        for n in round_trainable(msg.content):
            values = received[n].numpy().astype(np.float32) + np.float32(0.01)
            if context.node_id == 101 and n in (A, B):
                values = np.full_like(values, 1000.0)  # finite, far inside max_abs and float16
            out[n] = Array(values)
        return Message(reply_content(msg.content, ArrayRecord(out), _metrics()), reply_to=msg)

    strategy = FedLoRAResidual(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
                               include=[A, B, RES, LORA_HEAD], pack=True, mode="fedex", scaling=2.0)
    strategy.wire = WireFormat("float16")
    grid = InProcessGrid(app, 3)
    result = strategy.start(grid=grid, initial_arrays=lora_record(np.random.default_rng(0)), num_rounds=2,
                            train_config=ConfigRecord())
    assert all(result.arrays[n].numpy().dtype == np.float32 for n in result.arrays)
    assert strategy.rounds[1]["skipped"] and "residual overflowed" in strategy.rounds[1]["skip_reason"]


@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_client_side_dp_clipping_is_refused_in_a_lossy_format(precision):
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    from tests.test_strategies import numpy_client

    client = numpy_client()
    dp = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
        noise_multiplier=0.0, clipping_norm=0.5, num_sampled_clients=3)
    strategy = FedTT(dp, pack=True)
    strategy.wire = WireFormat(precision, 16)
    grid = InProcessGrid(lambda msg, ctx: fixedclipping_mod(msg, ctx, client), 3)
    initial = global_record()
    with pytest.raises(ValueError, match="client-side clipping mods do not expect"):
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=1, train_config=ConfigRecord())


def _flora_zero_update_rounds(feedback: bool):
    """FLoRA in int8 (one block): nodes train in round 1 only; in rounds 2 and 3 they return the fresh LoRA exactly
    as received. The dense residual after each round."""
    from strategies.residual import FedLoRAResidual
    from tests.test_exact_lora import HEAD as LORA_HEAD
    from tests.test_exact_lora import RES, A, B
    from tests.test_exact_lora import global_record as lora_record

    def app(msg: Message, context) -> Message:
        if msg.metadata.message_type != "train":
            return _eval_reply(msg)
        received = receive_global(msg.content)
        rnd = int(msg.content["config"]["server-round"])
        rng = np.random.default_rng(context.node_id)
        out = {}
        for n in round_trainable(msg.content):
            values = received[n].numpy().astype(np.float32)
            if rnd == 1:
                values = values + (0.3 * rng.normal(size=values.shape)).astype(np.float32)
            out[n] = Array(values)
        return Message(reply_content(msg.content, ArrayRecord(out), _metrics(),
                                     state=context.state if feedback else None), reply_to=msg)

    strategy = FedLoRAResidual(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
                               include=[A, B, RES, LORA_HEAD], pack=True, mode="flora", scaling=2.0, seed=7)
    strategy.wire = WireFormat("int8", 1 << 20)
    residuals = []
    aggregate = strategy.aggregate_train

    def spy(server_round, replies):
        out = aggregate(server_round, replies)
        residuals.append(strategy._global[RES].numpy().astype(np.float64).copy())
        return out

    strategy.aggregate_train = spy
    strategy.start(grid=InProcessGrid(app, 3), initial_arrays=lora_record(np.random.default_rng(0)), num_rounds=3,
                   train_config=ConfigRecord())
    return residuals


def test_flora_nodes_keep_no_residual_of_factors_it_redraws():
    without = _flora_zero_update_rounds(feedback=False)
    np.testing.assert_array_equal(without[1], without[0])  # control: no training, no change (B stays 0)
    with_fb = _flora_zero_update_rounds(feedback=True)
    # nobody trained in rounds 2 and 3: the effective matrix (residual + s B A, B = 0) must not move
    np.testing.assert_allclose(with_fb[1], with_fb[0], atol=1e-6)


def test_bfloat16_a_diverged_gpu_client_is_rejected():
    """CUDA's canonical NaN is 0x7FFFFFFF; trained - received keeps that payload, the bfloat16 rounding add wraps it
    to +0.0, and the server accepts a NaN reply as 'no change' (in float32 it is rejected)."""
    cuda_nan = np.array([0x7FFFFFFF], dtype=np.uint32).view(np.float32)[0]

    def app(msg: Message, context) -> Message:
        if msg.metadata.message_type != "train":
            return _eval_reply(msg)
        received = receive_global(msg.content)
        out = {}
        for n in round_trainable(msg.content):
            values = received[n].numpy().astype(np.float32) + np.float32(0.01)
            if context.node_id == 101:
                values = np.full_like(values, cuda_nan)  # training diverged on the GPU
            out[n] = Array(values)
        return Message(reply_content(msg.content, ArrayRecord(out), _metrics()), reply_to=msg)

    strategy = FedTT(FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0), pack=True)
    strategy.wire = WireFormat("bfloat16")
    strategy.start(grid=InProcessGrid(app, 2), initial_arrays=global_record(), num_rounds=1,
                   train_config=ConfigRecord())
    assert strategy.rounds[1]["rejected"] == 1, "the NaN reply was accepted"
