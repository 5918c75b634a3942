"""FedEx-LoRA and FLoRA: the global model is the clients' exact weighted mean (strategies.residual), end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedtt_flwr.inprocess import InProcessGrid
from strategies import receive_global, reply_content, round_trainable
from strategies.residual import FedLoRAResidual

OUT, IN, R, S = 6, 5, 2, 2.0  # one adapted 6x5 matrix, rank 2, scaling alpha / rank = 2
A, B = "m.q.lora_A.default.weight", "m.q.lora_B.default.weight"
RES, HEAD = "m.q.lora_residual", "m.classifier.weight"


def global_record(rng) -> ArrayRecord:
    return ArrayRecord({A: Array(rng.normal(size=(R, IN)).astype(np.float32)),
                        B: Array(rng.normal(size=(OUT, R)).astype(np.float32)),
                        RES: Array(rng.normal(size=(OUT, IN)).astype(np.float32)),
                        HEAD: Array(rng.normal(size=(2, OUT)).astype(np.float32)),
                        "backbone.w": Array(np.ones((3, 3), np.float32))})


def client(sent_back: dict):
    """A node that 'trains' to its own random A and B (float32, as a real ClientApp replies) and remembers them."""
    def app(msg: Message, context: Context) -> Message:
        received = receive_global(msg.content, context.state)
        if msg.metadata.message_type == "evaluate":
            return Message(RecordDict({"metrics": MetricRecord({"loss": 1.0, "num-examples": 5})}), reply_to=msg)
        assert RES in received and RES not in round_trainable(msg.content)  # the residual comes down, frozen
        rng = np.random.default_rng(context.node_id)
        trained = {n: (received[n].numpy() + rng.normal(size=received[n].shape)).astype(np.float32)
                   for n in round_trainable(msg.content)}
        n = 10 * (context.node_id - 100)
        sent_back[context.node_id] = (n, trained)
        return Message(reply_content(msg.content, ArrayRecord({k: Array(v) for k, v in trained.items()}),
                                     MetricRecord({"train-loss": 0.5, "num-examples": n})), reply_to=msg)
    return app


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("mode", ["fedex", "flora"])
def test_the_global_model_is_the_exact_weighted_mean_of_the_clients(mode, pack):
    rng = np.random.default_rng(0)
    initial = global_record(rng)
    sent_back: dict = {}
    strategy = FedLoRAResidual(FedAvg(min_train_nodes=3, min_available_nodes=3), include=[A, B, RES, HEAD],
                               pack=pack, mode=mode, scaling=S, seed=7)
    grid = InProcessGrid(client(sent_back), 3)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1, train_config=ConfigRecord())
    g = {n: result.arrays[n].numpy().astype(np.float64) for n in (A, B, RES, HEAD)}
    assert all(result.arrays[n].numpy().dtype == np.float32 for n in (A, B, RES, HEAD))
    total = sum(n for n, _ in sent_back.values())
    res0 = initial[RES].numpy().astype(np.float64)
    clients_mean = sum(n / total * (res0 + S * t[B].astype(np.float64) @ t[A].astype(np.float64))
                       for n, t in sent_back.values())
    np.testing.assert_allclose(g[RES] + S * g[B] @ g[A], clients_mean, rtol=1e-5, atol=1e-5)
    head_mean = sum(n / total * t[HEAD].astype(np.float64) for n, t in sent_back.values())
    np.testing.assert_allclose(g[HEAD], head_mean, rtol=1e-6, atol=1e-6)
    if mode == "flora":  # the stacked sum into the residual, and a fresh LoRA: A in peft's init range, B zero
        stacked = sum(n / total * t[B].astype(np.float64) @ t[A].astype(np.float64) for n, t in sent_back.values())
        np.testing.assert_allclose(g[RES], res0 + S * stacked, rtol=1e-5, atol=1e-5)
        assert not g[B].any() and np.abs(g[A]).max() <= 1 / np.sqrt(IN) and g[A].std() > 0
    else:  # FedEx: A and B are FedAvg's means; the residual takes exactly what the product of means misses
        a_mean = sum(n / total * t[A].astype(np.float64) for n, t in sent_back.values())
        np.testing.assert_allclose(g[A], a_mean, rtol=1e-6, atol=1e-6)
        assert not np.allclose(g[RES], res0)
    assert np.array_equal(result.arrays["backbone.w"].numpy(), initial["backbone.w"].numpy())


def test_a_server_optimizer_is_refused():
    from fedtt_flwr.config import RunConfig

    with pytest.raises(ValueError, match="fedex-lora .* needs server-opt fedavg or fedprox"):
        RunConfig(method="fedex-lora", server_opt="fedadam")


@pytest.mark.parametrize("method", ["fedex-lora", "flora"])
def test_a_federated_run_trains_and_sends_the_residual_down_only(tmp_path, tiny_model_dir, tiny_sst2_dir, method):
    from client_app.app import app as client_app
    from server_app.app import app as server_app

    def run(name, method):
        run_config = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
                      "num-server-rounds": 2, "local-steps": 3, "batch-size": 8, "max-length": 16, "lr": 0.01,
                      "min-clients": 3, "run-name": name, "method": method}
        grid = InProcessGrid(client_app, 3, run_config)
        server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    exact, lora = run(method, method), run("lora", "lora")
    assert [(x["replies"], x["errors"], x["rejected"]) for x in exact[1:]] == [(3, 0, 0), (3, 0, 0)]
    assert exact[-1]["bytes_up"] == lora[-1]["bytes_up"]  # up: A, B and the head, as LoRA
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.methods.build import build_model

    model, _ = build_model(RunConfig(model=str(tiny_model_dir), method=method, max_length=16))
    residual = {n: p for n, p in model.named_parameters() if n.endswith(".lora_residual")}
    assert residual and not any(p.requires_grad for p in residual.values())
    assert all(p.shape == model.get_submodule(n[: -len(".lora_residual")]).base_layer.weight.shape
               for n, p in residual.items())
    extra = exact[-1]["bytes_down"] - lora[-1]["bytes_down"]  # down also every residual, to each of the 3 nodes
    assert 3 * 4 * sum(p.numel() for p in residual.values()) <= extra < 1.1 * 3 * 4 * sum(
        p.numel() for p in residual.values()) + 3000
    assert exact[-1]["train_loss"] is not None and np.isfinite(exact[-1]["accuracy"])


def test_flora_stacks_clients_of_different_lora_ranks_exactly():
    """Nodes at LoRA ranks 1, 2 (global 2): each gets the first r rows of the round's A and r zero columns of B;
    its product enters the residual with its own peft scaling alpha / r."""
    rng = np.random.default_rng(1)
    initial = global_record(rng)
    initial[B] = Array(np.zeros((OUT, R), np.float32))  # FLoRA's round starts from B = 0
    ranks = {101: 1, 102: 2, 103: 1}
    alpha = S * R
    sent_back: dict = {}
    plain = client(sent_back)

    def app(msg, context):
        if msg.metadata.message_type == "query":
            return Message(RecordDict({"m": MetricRecord({"adapter-rank": ranks[context.node_id]})}), reply_to=msg)
        if msg.metadata.message_type == "train":
            got = receive_global(msg.content)
            r = ranks[context.node_id]
            assert got[A].shape == (r, IN) and got[B].shape == (OUT, r) and not got[B].numpy().any()
            np.testing.assert_array_equal(got[A].numpy(), initial[A].numpy()[:r])
        return plain(msg, context)

    for pack in (False, True):
        sent_back.clear()
        strategy = FedLoRAResidual(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
                                   include=[A, B, RES, HEAD], pack=pack, mode="flora", scaling=S, seed=3,
                                   node_ranks=True)
        result = strategy.start(grid=InProcessGrid(app, 3), initial_arrays=initial, num_rounds=1,
                                train_config=ConfigRecord())
        assert strategy.rounds[1]["replies"] == 3 and strategy.rounds[1]["rejected"] == 0
        total = sum(n for n, _ in sent_back.values())
        res0 = initial[RES].numpy().astype(np.float64)
        stacked = sum(n / total * alpha / ranks[nid] * t[B].astype(np.float64) @ t[A].astype(np.float64)
                      for nid, (n, t) in sent_back.items())
        np.testing.assert_allclose(result.arrays[RES].numpy(), res0 + stacked, rtol=1e-5, atol=1e-5)
        assert result.arrays[A].numpy().shape == (R, IN) and not result.arrays[B].numpy().any()


def test_per_node_lora_ranks_are_flora_only():
    from fedtt_flwr.config import RunConfig

    with pytest.raises(ValueError, match="node-ranks needs method fedtt .* or flora"):
        RunConfig(method="fedex-lora", node_ranks="4,8")
    with pytest.raises(ValueError, match="lora-rank = 8"):
        RunConfig(method="flora", node_ranks="4,16")
    with pytest.raises(ValueError, match="FLoRA only"):
        FedLoRAResidual(mode="fedex", node_ranks=True)


def test_a_flora_run_with_mixed_lora_ranks(tmp_path, tiny_model_dir, tiny_sst2_dir):
    from fedtt_flwr.inprocess import run_inprocess

    out = {}
    for name, ranks in (("mixed", "2,8,4"), ("same", "")):
        run_inprocess({"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 2,
                       "local-steps": 2, "max-length": 16, "output-dir": str(tmp_path), "run-name": name,
                       "method": "flora", "lora-rank": 8, "node-ranks": ranks}, num_nodes=3)
        out[name] = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [(x["replies"], x["errors"], x["rejected"]) for x in out["mixed"][1:]] == [(3, 0, 0), (3, 0, 0)]
    assert out["mixed"][1]["bytes_up"] < out["same"][1]["bytes_up"]  # two of three nodes below rank 8


def test_flora_starts_every_round_from_a_new_a():
    rng = np.random.default_rng(2)
    sent_back: dict = {}
    strategy = FedLoRAResidual(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
                               include=[A, B, RES, HEAD], mode="flora", scaling=S, seed=5)
    grid = InProcessGrid(client(sent_back), 3)
    strategy.start(grid=grid, initial_arrays=global_record(rng), num_rounds=3, train_config=ConfigRecord())
    firsts = [receive_global(m.content)[A].numpy() for m in grid.sent
              if m.metadata.message_type == "train" and m.metadata.dst_node_id == 101]
    assert len(firsts) == 3 and not np.allclose(firsts[1], firsts[2]) and not np.allclose(firsts[0], firsts[1])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_residual_is_float32_on_a_half_precision_backbone(tiny_model_dir, dtype):
    """It accumulates every round's step, so it lives in float32 like the LoRA factors (a half-precision residual
    lost the exactness, and a bfloat16 one could not even become a numpy array on the server)."""
    import torch

    from fedtt_flwr.adapters import get_adapter_state
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.methods.build import build_model

    model, _ = build_model(RunConfig(model=str(tiny_model_dir), method="fedex-lora", max_length=16, dtype=dtype))
    state = get_adapter_state(model)
    residuals = [n for n in state if n.endswith(".lora_residual")]
    assert residuals and all(state[n].dtype == torch.float32 for n in residuals)
    assert all(state[n].numpy().dtype == np.float32 for n in residuals)
    with torch.no_grad():
        for n in residuals:
            dict(model.named_parameters())[n].fill_(0.01)
        logits = model(input_ids=torch.tensor([[2, 5, 6, 3]])).logits
    assert logits.dtype == getattr(torch, dtype) and torch.isfinite(logits).all()


def test_adapters_off_leaves_the_residual_out_too(tiny_model_dir):
    """The backbone alone: the residual is adapter state (a zero-shot baseline of a FedEx-LoRA or FLoRA run must
    not carry what the federation learned)."""
    import torch

    from fedtt_flwr.adapters import adapters_off
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.methods.build import build_model

    model, _ = build_model(RunConfig(model=str(tiny_model_dir), method="flora", max_length=16))
    model.eval()
    batch = {"input_ids": torch.tensor([[2, 5, 6, 7, 3]]), "output_hidden_states": True}
    with torch.no_grad(), adapters_off(model):
        base = model(**batch).hidden_states[-1]
    residuals = [p for n, p in model.named_parameters() if n.endswith(".lora_residual")]
    with torch.no_grad():
        for p in residuals:  # random: a constant one would vanish on LayerNorm's zero-mean outputs
            p.normal_(std=0.5)
        with adapters_off(model):
            off = model(**batch).hidden_states[-1]
        on = model(**batch).hidden_states[-1]
    torch.testing.assert_close(off, base)
    assert (on - base).abs().max() > 0.1, "outside adapters_off the residual counts again"
