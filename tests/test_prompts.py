"""Decoder models: prompt templates, candidate scoring, training and a federated round trip."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DECODER_CONFIGS, tiny_model
from datasets import Dataset
from transformers import AutoTokenizer

from fedtt_flwr.adapters import get_adapter_state
from fedtt_flwr.config import RunConfig
from fedtt_flwr.methods import build_model, prompt_task
from fedtt_flwr.prompts import (
    PROMPTS,
    CandidateScorer,
    PromptCollator,
    encode_prompts,
    get_prompt,
    is_decoder_only,
)
from fedtt_flwr.train import cycle, evaluate, make_loader, tokenize, train_steps


def test_templates_cover_every_label_and_render():
    for task, prompt in PROMPTS.items():
        assert get_prompt(task) is prompt
    assert PROMPTS["rte"].render(" A cat sat. ", "A cat sits") == 'A cat sat.\nDoes this mean that "A cat sits" is ' \
                                                                    "true? Yes or No?\n"
    assert PROMPTS["sst2"].choices == (" terrible", " great")  # label 0 negative, 1 positive
    with pytest.raises(ValueError, match="no prompt template"):
        get_prompt("no-such-task")


def test_decoder_only_detection():
    assert all(is_decoder_only(t) for t in ("llama", "mistral", "qwen2"))
    assert not any(is_decoder_only(t) for t in ("bert", "roberta", "distilbert"))


@pytest.mark.parametrize("family", sorted(DECODER_CONFIGS))
@pytest.mark.parametrize("answers", [[[5], [7]], [[5], [7, 8, 9]], [[5, 6], [7, 8, 9], [10]]])
def test_scores_equal_a_hand_computation(family, answers):
    """Every candidate's score is the mean log-probability of its tokens after its own prompt, computed
    alone and unpadded; here with prompts of different lengths (padding) and answers of 1 to 3 tokens."""
    lm = tiny_model(family)
    prompts = [[1, 3, 4, 10, 11], [1, 12], [1, 13, 14, 15, 16, 17, 18]]
    collate = PromptCollator(type("Tok", (), {"pad_token_id": 0, "eos_token_id": 2})())
    batch = collate([{"input_ids": p, "label": i % len(answers)} for i, p in enumerate(prompts)])
    scorer = CandidateScorer(lm, answers).eval()
    with torch.no_grad():
        out = scorer(**batch)
        for b, prompt in enumerate(prompts):
            for c, answer in enumerate(answers):
                logp = lm(input_ids=torch.tensor([prompt + answer])).logits[0].log_softmax(-1)
                hand = sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(answer)) / len(answer)
                assert out.logits[b, c].item() == pytest.approx(hand.item(), abs=1e-5)
    expected = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    assert out.loss.item() == pytest.approx(expected.item())


def test_long_prompts_keep_their_end_and_bos(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    words = "good bad " * 20
    ds = Dataset.from_dict({"text_a": [words + "plot"], "text_b": [""], "label": [1]})
    ids = encode_prompts(ds, tok, "sst2", max_length=10)["input_ids"][0]
    assert len(ids) == 9  # room for the longest answer (one token here)
    assert ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[-3:]) == ["plot", "It", "was"]
    with pytest.raises(ValueError, match="max-length 2"):
        encode_prompts(ds, tok, "sst2", max_length=2)


def test_decoder_run_config_builds_a_scorer(tiny_llama_dir, tiny_model_dir):
    cfg = RunConfig(model=str(tiny_llama_dir), task="sst2")
    assert prompt_task(cfg) == "sst2"
    assert prompt_task(RunConfig(model=str(tiny_model_dir))) is None
    model, _ = build_model(cfg)
    assert isinstance(model, CandidateScorer) and model.num_choices == 2
    names = model.fedtt_state_names
    assert names and all(".adapter." in n for n in names)  # no head: the LM head stays frozen
    assert all(".mlp." in n for n in names)
    with pytest.raises(ValueError, match="task-format|classifier|prompt"):
        RunConfig(model=str(tiny_llama_dir), task_format="generate")


@pytest.mark.parametrize("method", ["fedtt", "lora"])
def test_training_moves_only_the_travelling_tensors(tiny_llama_dir, tiny_sst2_dir, method):
    from fedtt_flwr.data import load_split

    cfg = RunConfig(model=str(tiny_llama_dir), task="sst2", method=method, lr=1e-2)
    model, tok = build_model(cfg)
    data = tokenize(load_split("sst2", "train", tiny_sst2_dir), tok, 32, "sst2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dev = make_loader(data.select(range(64)), tok, 64, False, prompt_task="sst2")
    loss0 = evaluate(model, dev, "sst2", torch.device("cpu"))["loss"]
    params = [p for p in model.parameters() if p.requires_grad]
    train_steps(model, cycle(make_loader(data, tok, 16, True, prompt_task="sst2")), torch.optim.AdamW(params, lr=1e-2),
                30, torch.device("cpu"))
    travelling = set(model.fedtt_state_names)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in travelling), n
    assert evaluate(model, dev, "sst2", torch.device("cpu"))["loss"] < loss0


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_other_decoder_families_take_adapters_and_train(tiny_llama_dir, tiny_sst2_dir, family):
    """The architecture part (adapter placement, scorer forward and backward); the tokenizer is the tiny
    LLaMA's (transformers rebuilds a generic tokenizer saved next to a Qwen2 config as Qwen2's own)."""
    from fedtt_flwr.adapters import add_tt_adapters
    from fedtt_flwr.data import load_split

    lm = tiny_model(family)
    model = add_tt_adapters(CandidateScorer(lm, [[5], [6]]))
    assert model.fedtt_state_names and all(".mlp." in n for n in model.fedtt_state_names)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = tokenize(load_split("sst2", "dev", tiny_sst2_dir), tok, 32, "sst2")
    state0 = get_adapter_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    train_steps(model, cycle(make_loader(data, tok, 8, True, prompt_task="sst2")), torch.optim.AdamW(params), 2,
                torch.device("cpu"))
    assert any(not torch.equal(v, get_adapter_state(model)[k]) for k, v in state0.items())


@pytest.mark.parametrize("method", ["fedtt", "fedtt+"])
def test_federated_round_trip_in_process(tmp_path, tiny_llama_dir, tiny_sst2_dir, method):
    from fedtt_flwr.inprocess import run_inprocess

    summary = run_inprocess({"model": str(tiny_llama_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 2,
                             "local-steps": 3, "max-length": 24, "output-dir": str(tmp_path), "run-name": "r",
                             "method": method, "task": "sst2"}, num_nodes=2)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds"] == 2 and [x["replies"] for x in lines[1:]] == [2, 2]
    assert all(0 <= x["accuracy"] <= 1 for x in lines)
    assert lines[1]["bytes_up"] > 0


def test_gradient_checkpointing_gives_the_same_scores_and_gradients(tiny_llama_dir):
    """With checkpointing the KV cache is off, so answers longer than one token take the uncached path."""
    outs = []
    for ckpt in (False, True):
        model, _ = build_model(RunConfig(model=str(tiny_llama_dir), task="sst2", gradient_checkpointing=ckpt))
        model.answers, model.num_choices = [[5], [7, 8, 9], [10, 11]], 3
        model.train()
        batch = PromptCollator(type("Tok", (), {"pad_token_id": 0})())(
            [{"input_ids": [1, 3, 4, 10], "label": 0}, {"input_ids": [1, 12], "label": 2}])
        out = model(**batch)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        outs.append((out.logits.detach(), grads))
    assert model.lm.is_gradient_checkpointing
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(outs[0][1], outs[1][1], strict=True))


@pytest.mark.parametrize("method", ["fedtt", "lora"])
def test_adapters_off_gives_the_backbone_alone(method):
    from fedtt_flwr.adapters import adapters_off, add_tt_adapters
    from fedtt_flwr.methods import add_lora

    model = CandidateScorer(tiny_model("llama"), [[5], [7]]).eval()
    batch = PromptCollator(type("Tok", (), {"pad_token_id": 0})())([{"input_ids": [1, 3, 4], "label": 0}])
    with torch.no_grad():
        base = model(**batch).logits
        if method == "fedtt":
            add_tt_adapters(model)
        else:
            model = add_lora(model)
            for n, p in model.named_parameters():  # peft starts B at zero: move it so LoRA changes the output
                if ".lora_B." in n:
                    p.normal_()
        adapted = model(**batch).logits
        with adapters_off(model):
            off = model(**batch).logits
        assert not torch.allclose(adapted, base, atol=1e-4)
        assert torch.allclose(off, base, atol=1e-6)
        assert torch.equal(model(**batch).logits, adapted)  # switched back on


def test_client_memory_estimate():
    from fedtt_flwr.report import client_memory, param_report

    report = param_report("llama-2-7b", task_kind="causal-lm")
    full = client_memory(report, batch_size=4, seq_len=512)
    assert full["backbone"] == round(report["backbone_params"] * 2 / 1e9, 3)
    assert full["adapters"] == round(report["tt"]["trainable_params"] * 16 / 1e9, 3)
    ckpt = client_memory(report, batch_size=4, seq_len=512, gradient_checkpointing=True)
    assert ckpt["activations"] < full["activations"] / 5
    double = client_memory(report, batch_size=8, seq_len=512)["activations"]
    assert double == pytest.approx(2 * full["activations"], rel=1e-3)
    assert client_memory(report, dtype="float32")["backbone"] == round(report["backbone_params"] * 4 / 1e9, 3)
    with pytest.raises(ValueError, match="dtype"):
        client_memory(report, dtype="int8")


@pytest.mark.parametrize(("dtype", "amp"), [("bfloat16", None), ("float32", torch.bfloat16)])
def test_bf16_backbone_or_autocast_trains_fp32_adapters(tiny_llama_dir, dtype, amp):
    """The GPU settings (a bf16 backbone, or bf16 autocast) on CPU: fp32 adapters get finite gradients."""
    model, tok = build_model(RunConfig(model=str(tiny_llama_dir), task="sst2", dtype=dtype))
    batch = PromptCollator(tok)([{"input_ids": [1, 3, 4], "label": 0}, {"input_ids": [1, 5], "label": 1}])
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        out = model(**batch)
    out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)


def test_a_decoder_adapter_file_reloads_into_the_same_scorer(tmp_path, tiny_llama_dir):
    from fedtt_flwr.checkpoint import load_adapted_model, save_adapter

    model, tok = build_model(RunConfig(model=str(tiny_llama_dir), task="sst2"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in set(model.fedtt_state_names):
                p.add_(0.01 * torch.randn_like(p))
    path = save_adapter(model, tmp_path / "adapter.safetensors", task="sst2")
    loaded, _ = load_adapted_model(path)
    batch = PromptCollator(tok)([{"input_ids": [1, 3, 4], "label": 0}, {"input_ids": [1, 5], "label": 1}])
    assert isinstance(loaded, CandidateScorer) and loaded.answers == model.answers
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model.eval()(**batch).logits, atol=1e-6)
