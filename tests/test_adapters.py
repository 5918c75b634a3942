"""Adapter injection on every supported family, and the state that travels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DECODER_CONFIGS, ENCODER_CONFIGS, tiny_model
from transformers import GPT2Config, GPT2LMHeadModel

from fedtt_flwr import (
    TTAdapterConfig,
    TTLinear,
    add_tt_adapters,
    count_parameters,
    get_adapter_state,
    set_adapter_state,
    tt_layers,
)
from fedtt_flwr.adapters import AdaptedLinear, TTAdapter
from fedtt_flwr.models import build_empty_model

FAMILIES = list(ENCODER_CONFIGS) + list(DECODER_CONFIGS)


def _inputs(model, seq=7):
    torch.manual_seed(123)
    ids = torch.randint(3, 90, (2, seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_injection_freezes_backbone_and_places_adapters(family):
    model = tiny_model(family)
    layers = model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layers
    add_tt_adapters(model, TTAdapterConfig(rank=3, bottleneck=8, bias=True))
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}
    per_block = 3 if family in DECODER_CONFIGS else 2
    assert len(wrapped) == per_block * layers
    if family in DECODER_CONFIGS:
        assert sorted({n.rsplit(".", 1)[1] + ":" + m.position for n, m in wrapped.items()}) == [
            "down_proj:output", "gate_proj:input", "up_proj:input"]
    else:
        assert {m.position for m in wrapped.values()} == {"output"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.fedtt_state_names)
    tt = {n for n in trainable if ".adapter." in n}
    cores_per_layer = len(next(v for k, v in tt_layers(model).items() if ".adapter." in f".{k}.").shape)
    assert len(tt) == per_block * layers * 2 * (cores_per_layer + 1)  # cores + bias, down and up
    head = trainable - tt
    if family in DECODER_CONFIGS:
        assert head == set()  # LM head stays frozen
    else:
        assert head and all("classifier" in n or "pooler" in n for n in head), head


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_change_only_through_adapters(family):
    model = tiny_model(family)
    inputs = _inputs(model)
    before = _out(model, inputs)
    # the head keeps its dense classifier here: a tensorized one is a new layer, not a no-op
    add_tt_adapters(model, TTAdapterConfig(rank=3, bottleneck=8, scaling=0.0, bias=True, tensorized_classifier=False))
    assert torch.allclose(_out(model, inputs), before, atol=1e-6), "a zero-scaled adapter must be a no-op"
    for layer in tt_layers(model).values():
        torch.nn.init.normal_(layer.bias)
    for m in model.modules():
        if isinstance(m, AdaptedLinear):
            m.adapter.scaling = 1.0
    assert not torch.allclose(_out(model, inputs), before, atol=1e-4)

    # one optimizer step moves only the travelling tensors
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    state0 = get_adapter_state(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(**inputs).logits.float().pow(2).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"backbone tensor {n} changed"
    state1 = get_adapter_state(model)
    assert any(not torch.equal(state0[n], state1[n]) for n in state0)


def test_unsupported_architecture_names_what_it_looked_for():
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel has no module where a TT adapter goes.*gate_proj"):
        add_tt_adapters(model)


def test_a_partial_placement_is_an_error_naming_what_is_missing():
    """An encoder whose FFN output is `output.dense` (matched) but whose attention output has a name no rule knows:
    half the method's adapters would be silently missing."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.output, self.attention = nn.Module(), nn.Module()
            self.output.dense, self.attention.proj = nn.Linear(32, 32), nn.Linear(32, 32)

    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.layer = nn.ModuleList([Block(), Block()])
    with pytest.raises(ValueError, match=r"Module matches only part.*attention\\.\(output.*\(0 of 2\)"):
        add_tt_adapters(model, TTAdapterConfig())


def test_mpnet_gets_the_encoder_placement_lora_on_q_v_and_a_mean_pooled_head():
    """MPNet (all-mpnet-base-v2, RoBERTa-base's shape) names its attention output `attention.attn.o`."""
    import torch
    from transformers import AutoModelForSequenceClassification, MPNetConfig

    from fedtt_flwr.methods.lora import lora_targets
    from fedtt_flwr.models import set_mean_pooling

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(MPNetConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99))
    assert lora_targets(model) == ["q", "v"]
    set_mean_pooling(model)
    model.eval()
    ids = torch.tensor([[5, 6, 7, 1, 1], [8, 9, 10, 11, 12]])
    mask = (ids != 1).long()
    with torch.no_grad():
        states = model.mpnet(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = model.classifier.out_proj(torch.tanh(model.classifier.dense(mean)))
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)
    add_tt_adapters(model, TTAdapterConfig())
    adapted = [n for n, _ in model.named_modules() if n.endswith(".adapter")]
    assert sorted(adapted) == sorted(f"mpnet.encoder.layer.{i}.{p}.adapter" for i in range(2)
                                     for p in ("attention.attn.o", "output.dense"))


def test_adding_twice_is_an_error():
    model = add_tt_adapters(tiny_model("bert"))
    with pytest.raises(ValueError, match="already has TT adapters"):
        add_tt_adapters(model)


def test_state_roundtrip_and_strictness():
    model = add_tt_adapters(tiny_model("bert"), TTAdapterConfig(rank=2, bottleneck=4))
    state = get_adapter_state(model)
    assert list(state) == list(model.fedtt_state_names)
    assert all(not t.requires_grad and t.device.type == "cpu" for t in state.values())
    new = {n: torch.randn_like(t) for n, t in state.items()}
    set_adapter_state(model, new)
    got = get_adapter_state(model)
    assert all(torch.equal(got[n], new[n]) for n in new)
    # numpy arrays are accepted (what arrives from Flower)
    set_adapter_state(model, {n: t.numpy() * 2 for n, t in new.items()})
    assert torch.equal(get_adapter_state(model)[next(iter(new))], next(iter(new.values())) * 2)

    with pytest.raises(KeyError, match="unknown tensor name"):
        set_adapter_state(model, {**new, "bert.embeddings.word_embeddings.weight": torch.zeros(1)})
    first = next(iter(new))
    partial = {first: new[first]}
    with pytest.raises(KeyError, match="lacks"):
        set_adapter_state(model, partial)
    set_adapter_state(model, partial, strict=False)
    with pytest.raises(ValueError, match="shape mismatch"):
        set_adapter_state(model, {first: np.zeros((1, 2, 3), dtype=np.float32)}, strict=False)


def test_state_names_are_readable_and_stable():
    a = add_tt_adapters(tiny_model("bert", seed=0))
    b = add_tt_adapters(tiny_model("bert", seed=1))
    assert a.fedtt_state_names == b.fedtt_state_names
    assert "bert.encoder.layer.0.attention.output.dense.adapter.down.core_0" in a.fedtt_state_names
    assert "bert.encoder.layer.1.output.dense.adapter.up.core_3" in a.fedtt_state_names  # hidden 32: 4 cores
    assert not any(n.endswith("adapter.up.bias") for n in a.fedtt_state_names)  # biases are off by default
    c = add_tt_adapters(tiny_model("bert"), TTAdapterConfig(bias=True))
    assert "bert.encoder.layer.1.output.dense.adapter.up.bias" in c.fedtt_state_names


def test_tensorized_classifier_and_layernorm_flags():
    model = add_tt_adapters(tiny_model("roberta"), TTAdapterConfig(tensorized_classifier=True, train_layernorm=True))
    assert isinstance(model.classifier.dense, TTLinear)
    names = set(model.fedtt_state_names)
    assert "classifier.dense.core_0" in names and "classifier.out_proj.weight" in names
    assert "roberta.encoder.layer.0.attention.output.LayerNorm.weight" in names
    assert "roberta.embeddings.LayerNorm.bias" in names
    model(**_inputs(model))  # still runs
    with pytest.raises(ValueError, match="classifier.dense"):
        add_tt_adapters(tiny_model("bert"), TTAdapterConfig(tensorized_classifier=True))


def test_tensorized_classifier_auto_applies_where_there_is_a_dense_head():
    assert isinstance(add_tt_adapters(tiny_model("roberta")).classifier.dense, TTLinear)  # the default: auto
    assert isinstance(add_tt_adapters(tiny_model("roberta"), TTAdapterConfig(tensorized_classifier=False))
                      .classifier.dense, torch.nn.Linear)
    dense = add_tt_adapters(tiny_model("roberta"), TTAdapterConfig(dense=True))  # the dense baseline: dense head
    assert type(dense.classifier.dense) is torch.nn.Linear and "classifier.dense.weight" in dense.fedtt_state_names
    bert = add_tt_adapters(tiny_model("bert"))  # BERT's head is one Linear: nothing to tensorize
    assert type(bert.classifier) is torch.nn.Linear


def test_config_validation_errors():
    with pytest.raises(ValueError, match="rank"):
        TTAdapterConfig(rank=0)
    with pytest.raises(ValueError, match="activation"):
        TTAdapterConfig(activation="swish")
    with pytest.raises(ValueError, match="extra"):
        TTAdapterConfig(rnak=5)
    with pytest.raises(ValueError, match="shape .* has product"):
        add_tt_adapters(tiny_model("bert"), TTAdapterConfig(shape=(2, 2, 2)))


@pytest.mark.parametrize("name,kind,expected", [
    ("roberta-base", "classification", 37_440),
    ("roberta-large", "classification", 80_640),
    ("llama-2-7b", "causal-lm", 211_200),
])
def test_worked_parameter_counts_on_configs_without_weights(name, kind, expected):
    model = add_tt_adapters(build_empty_model(name, kind), TTAdapterConfig(rank=5, bias=True,
                                                                            tensorized_classifier=False))
    assert next(model.parameters()).device.type == "meta"
    assert count_parameters(model)["tt_cores"] == expected


def test_near_identity_init_starts_close_to_the_pretrained_model_and_still_trains():
    from fedtt_flwr.adapters import TTAdapter

    torch.manual_seed(0)
    z = torch.randn(64, 384)
    loretta = TTAdapter(384, TTAdapterConfig())
    near = TTAdapter(384, TTAdapterConfig(init="near-identity"))
    assert loretta.up.to_dense().std().item() == pytest.approx((1 / (64 + 384)) ** 0.5, rel=0.3)
    assert near.up.to_dense().std().item() == pytest.approx(1e-3, rel=0.3)
    assert near(z).norm() < 0.05 * loretta(z).norm()  # the adapter starts as a small perturbation
    near(z).pow(2).sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in (*near.up.cores, *near.down.cores))


def test_adapter_scaling_multiplies_the_output_and_one_skips_the_multiply() -> None:
    """scaling=1.0 takes a shortcut (no multiply pass over the tokens); any other value scales the same output."""
    torch.manual_seed(0)
    adapter = TTAdapter(24, TTAdapterConfig(rank=3, bottleneck=8, bias=True))
    z = torch.randn(5, 24)
    one = adapter(z)
    adapter.scaling = 2.5
    torch.testing.assert_close(adapter(z), 2.5 * one)
    adapter.scaling = 0.0
    assert torch.count_nonzero(adapter(z)) == 0
