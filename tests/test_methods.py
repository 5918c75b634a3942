"""Baseline methods in the same harness: what trains and travels for each (issue: baselines)."""

from __future__ import annotations

import pytest
import torch
from test_app_inprocess import run_app

from fedtt_flwr.config import RunConfig
from fedtt_flwr.methods import build_model, resolve
from strategies import named_arrays, record_bytes


def _travelling(model):
    params = dict(model.named_parameters())
    return {n: tuple(params[n].shape) for n in model.fedtt_state_names}


def test_each_methods_travelling_tensors(tiny_model_dir):
    built = {m: build_model(RunConfig(model=str(tiny_model_dir), method=m))[0]
             for m in ("fedtt", "adapter", "lora", "ffa-lora", "rolora")}
    tt = _travelling(built["fedtt"])
    # train-layernorm = auto: TT adapters also send the LayerNorm gains, the baselines do not
    assert all(".adapter." in n and ".core_" in n for n in tt if "classifier" not in n and "LayerNorm" not in n)
    assert sum(n.endswith("LayerNorm.weight") for n in tt) == 5 and not any(n.endswith("LayerNorm.bias") for n in tt)
    assert not any("LayerNorm" in n for m in ("adapter", "lora") for n in _travelling(built[m]))
    dense = _travelling(built["adapter"])
    adapters = {n: s for n, s in dense.items() if ".adapter." in n}
    assert len(adapters) == 2 * 2 * 2  # 2 layers x 2 adapters x (down, up) weights, no biases by default
    assert {s for n, s in adapters.items() if n.endswith("down.weight")} == {(64, 32)}  # same bottleneck
    lora = _travelling(built["lora"])
    a = {n: s for n, s in lora.items() if ".lora_A." in n}
    b = {n: s for n, s in lora.items() if ".lora_B." in n}
    assert len(a) == len(b) == 2 * 2  # query and value in each of 2 layers
    assert set(a.values()) == {(8, 32)} and set(b.values()) == {(32, 8)}
    assert all(("query" in n or "value" in n) for n in a)
    head = {n for n in lora if "classifier" in n}
    assert head == {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    ffa = _travelling(built["ffa-lora"])
    assert set(ffa) == set(b) | head  # A never travels
    assert not any(p.requires_grad for n, p in built["ffa-lora"].named_parameters() if ".lora_A." in n)
    assert set(_travelling(built["rolora"])) == set(lora)
    for model in built.values():
        assert {n for n, p in model.named_parameters() if p.requires_grad} == set(model.fedtt_state_names)


@pytest.mark.parametrize("method", ["fedtt", "lora"])
def test_train_layernorm_adds_the_norm_gains_or_gains_and_biases(tiny_model_dir, method):
    def norms(which):
        model = build_model(RunConfig(model=str(tiny_model_dir), method=method, **{"train-layernorm": which}))[0]
        assert {n for n, p in model.named_parameters() if p.requires_grad} == set(model.fedtt_state_names)
        return {n.removeprefix("base_model.model.") for n in model.fedtt_state_names if "LayerNorm" in n}

    assert norms(False) == set()
    gains = norms("weight")
    # tiny BERT, 2 layers: the embeddings' norm and two per layer
    assert len(gains) == 5 and all(n.endswith("LayerNorm.weight") for n in gains)
    assert "bert.embeddings.LayerNorm.weight" in gains
    assert norms(True) == gains | {n.replace(".weight", ".bias") for n in gains}


def test_ffa_lora_a_is_the_same_everywhere_for_a_seed(tiny_model_dir):
    def a_of(seed):
        model = build_model(RunConfig(model=str(tiny_model_dir), method="ffa-lora", seed=seed))[0]
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}

    first, again, other = a_of(0), a_of(0), a_of(1)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


@pytest.mark.parametrize("method", ["lora", "ffa-lora", "rolora", "adapter"])
def test_methods_run_through_the_same_apps(tmp_path, tiny_model_dir, tiny_sst2_dir, method):
    grid, _, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method=method)
    assert [x["round"] for x in lines] == [0, 1, 2] and all(x["replies"] == 3 for x in lines[1:])
    train = {r: [m for m in grid.sent if m.metadata.message_type == "train"
                 and m.content["config"]["server-round"] == r] for r in (1, 2)}
    sent_up = {r: set(named_arrays(train[r][0].content).keys()) for r in (1, 2)}
    if method == "ffa-lora":
        assert not any(".lora_A." in n for m in grid.sent for key in m.content.array_records
                       for n in named_arrays(m.content, key))
    if method == "rolora":
        assert any(".lora_A." in n for n in sent_up[1]) and not any(".lora_B." in n for n in sent_up[1])
        assert any(".lora_B." in n for n in sent_up[2]) and not any(".lora_A." in n for n in sent_up[2])
        assert lines[1]["bytes_up"] > 0 and lines[1]["schedule"].startswith("group")
    # bytes in metrics.jsonl are the serialized size of what was sent
    for r in (1, 2):
        down = sum(record_bytes(m.content) for m in grid.sent if m.content["config"].get("server-round") == r)
        assert lines[r]["bytes_down"] == down


def test_unknown_method_is_a_clear_error(tmp_path, tiny_model_dir, tiny_sst2_dir):
    with pytest.raises(ValueError, match="'method'"):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method="qlora")


@pytest.mark.parametrize("method", ["fedtt", "lora"])
def test_centralized_reference_trains_each_method(tmp_path, tiny_model_dir, tiny_sst2_dir, method):
    from fedtt_flwr.centralized import FinetuneConfig, finetune
    from fedtt_flwr.checkpoint import read_adapter

    cfg = FinetuneConfig(model=str(tiny_model_dir), task="sst2", method=method, data_dir=str(tiny_sst2_dir),
                         epochs=4, batch_size=8, max_length=16, lr=0.02, output_dir=str(tmp_path))
    result = finetune(cfg)
    assert result["dev"]["accuracy"] >= 0.9  # the tiny task is learnable by either method
    state, adapter_config, _ = read_adapter(result["adapter_file"])
    assert (adapter_config is None) == (method == "lora") and f"-{method}-" in result["adapter_file"]
    assert any(".lora_B." in n for n in state) == (method == "lora")
    assert result["params"]["travelling"] == sum(v.numel() for v in state.values())


def test_train_layernorm_auto_resolves_per_method_and_head(tiny_model_dir, tiny_llama_dir):
    def resolved(**kw):
        return resolve(RunConfig(**kw)).train_layernorm

    assert resolved(model=str(tiny_model_dir), method="fedtt") == "weight"
    assert resolved(model=str(tiny_model_dir), method="fedtt+") == "weight"
    assert resolved(model=str(tiny_model_dir), method="lora") is False
    assert resolved(model=str(tiny_model_dir), method="adapter") is False
    assert resolved(model=str(tiny_model_dir), method="fedtt", train_layernorm=False) is False
    assert resolved(model=str(tiny_llama_dir), method="fedtt") is False  # prompt-scored decoder: not measured
    assert resolved(model=str(tiny_llama_dir), method="fedtt", train_layernorm="weight") == "weight"


def test_adapter_init_auto_resolves_per_method_and_head(tiny_model_dir, tiny_llama_dir):
    def resolved(**kw):
        cfg = RunConfig(**kw)
        return resolve(cfg).adapter_init, resolve(cfg).adapter_config(cfg).init

    assert resolved(model=str(tiny_model_dir), method="fedtt") == ("near-identity", "near-identity")
    assert resolved(model=str(tiny_model_dir), method="fedtt+") == ("near-identity", "near-identity")
    assert resolved(model=str(tiny_model_dir), method="lora")[0] == "loretta"
    assert resolved(model=str(tiny_llama_dir), method="fedtt") == ("loretta", "loretta")  # prompt-scored
    assert resolved(model=str(tiny_model_dir), method="fedtt", adapter_init="loretta") == ("loretta", "loretta")
    with pytest.raises(ValueError, match="adapter-init"):
        RunConfig.from_flower({"adapter-init": "zeros"})
