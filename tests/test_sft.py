"""Instruction tuning (task-kind = generation): the two record formats, prompts with and without a chat template,
loss on the response tokens only, evaluation, and a federated run through the apps."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fedtt_flwr.config import RunConfig
from fedtt_flwr.data import load_split
from fedtt_flwr.sft import PLAIN_TEMPLATE, SFTCollator, encode_sft, normalize, prompt_ids
from fedtt_flwr.tasks import task_of

RECORDS = [{"instruction": "Is it great", "input": "the movie was great", "output": "Yes"},
           {"instruction": "Is it terrible", "output": "No"},
           {"messages": [{"role": "system", "content": "Yes or No"}, {"role": "user", "content": "was it great"},
                         {"role": "assistant", "content": "Yes"}]}]


def _task(path, **keys) -> RunConfig:
    return RunConfig(task="custom", task_kind="generation", train_file=str(path), dev_file=str(path), **keys)


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_alpaca_and_chat_records_become_prompts_and_responses(records):
    ds = load_split(task_of(_task(records)), "train")
    assert [json.loads(p) for p in ds["text_a"]] == [
        [{"role": "user", "content": "Is it great\n\nthe movie was great"}],
        [{"role": "user", "content": "Is it terrible"}],
        RECORDS[2]["messages"][:2]]
    assert ds["label"] == ["Yes", "No", "Yes"]


@pytest.mark.parametrize("content,message", [
    ({"instruction": "x", "output": "  "}, r"line 1, column 'output': empty text"),
    ({"instruction": "x"}, r"line 1: no column 'output' \(an instruction record has instruction, input, output or "
                           r"'messages'"),
    ({"instruction": "x", "input": 3, "output": "y"}, r"line 1, column 'input': expected text, got int 3"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"line 1, column 'messages': expected a list of at least two"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
     r"line 1, column 'messages': message 1 must be"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
     r"line 1, column 'messages': the last message must be the assistant's answer, not empty"),
], ids=["empty-output", "missing-output", "input-not-text", "one-message", "bad-role", "empty-answer"])
def test_a_bad_record_names_the_file_row_and_column(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(content) + "\n")
    with pytest.raises(ValueError, match="^" + re.escape(str(path)) + " " + message):
        load_split(task_of(_task(path)), "train")


def test_prompts_use_the_chat_template_or_the_plain_one(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    messages = [{"role": "user", "content": "was it great"}]
    assert not tok.chat_template
    plain = PLAIN_TEMPLATE["user"].format(content="was it great") + "### Response:\n"
    assert prompt_ids(messages, tok) == tok(plain)["input_ids"]
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}<assistant> {% endif %}")
    assert prompt_ids(messages, tok) == tok("<user> was it great <assistant> ", add_special_tokens=False)["input_ids"]


def test_only_response_tokens_carry_loss(records, tiny_llama_dir):
    """The model's loss on a batch equals a hand computation over the response tokens alone."""
    from fedtt_flwr.methods.build import build_model, prompt_task
    from fedtt_flwr.train import make_loader, tokenize

    cfg = _task(records, model=str(tiny_llama_dir))
    model, tok = build_model(cfg)
    data = tokenize(load_split(task_of(cfg), "train"), tok, 64, prompt_task(cfg))
    for row in data:  # the prompt is masked, the answer (and the end-of-sequence token) is not
        n = row["prompt_len"]
        assert row["labels"][:n] == [-100] * n and row["labels"][n:] == row["input_ids"][n:]
        assert row["input_ids"][-1] == tok.eos_token_id
    batch = next(iter(make_loader(data, tok, 3, shuffle=True, prompt_task=prompt_task(cfg))))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # training batches: nothing else
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss
        logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    terms = [-logp[b, t - 1, batch["labels"][b, t]].item() for b in range(3) for t in range(1, batch["labels"].shape[1])
             if batch["labels"][b, t] != -100]
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)
    assert len(terms) == sum(len(r["labels"]) - r["prompt_len"] for r in data)


def test_truncation_keeps_the_answer_and_the_templates_markers(tiny_llama_dir):
    """A long prompt loses the middle of its longest message, not the template's start or end."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    long = " ".join(["great"] * 50)
    messages = [{"role": "user", "content": "Is it " + long + " Yes"}]
    ds = Dataset.from_dict({"text_a": [json.dumps(messages)], "label": ["No"]})
    row = encode_sft(ds, tok, 16)[0]
    assert len(row["input_ids"]) <= 16 and row["labels"][-1] == tok.eos_token_id
    n = row["prompt_len"]
    assert row["labels"][n:] == row["input_ids"][n:] == tok("No", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id]
    empty = prompt_ids([{"role": "user", "content": ""}], tok)  # the template's own tokens around the message
    start, end = empty[:3], empty[-2:]
    assert row["input_ids"][:3] == start and row["input_ids"][n - 2:n] == end
    assert tok.convert_tokens_to_ids("Yes") in row["input_ids"][:n]  # the message's end (its question) is kept


def test_evaluation_scores_exact_match_on_short_answers(records, tiny_llama_dir):
    from fedtt_flwr.methods.build import build_model, prompt_task
    from fedtt_flwr.train import evaluate, make_loader, tokenize

    cfg = _task(records, model=str(tiny_llama_dir))
    model, tok = build_model(cfg)
    data = tokenize(load_split(task_of(cfg), "dev"), tok, 64, prompt_task(cfg))
    loader = make_loader(data, tok, 2, shuffle=False, prompt_task=prompt_task(cfg))
    assert isinstance(loader.collate_fn, SFTCollator) and loader.collate_fn.generation
    metrics = evaluate(model, loader, task_of(cfg), torch.device("cpu"))
    assert metrics["em_examples"] == 3 and 0 <= metrics["exact_match"] <= 1
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))
    assert normalize("  The Yes!") == normalize("yes") == "yes"


def test_instruction_tuning_federates_with_every_tt_method(tmp_path, tiny_llama_dir):
    from test_app_inprocess import run_app

    from fedtt_flwr import client as client_module

    path = tmp_path / "mix.jsonl"
    rows = [{"instruction": f"Is it {w}", "output": "Yes" if w in ("great", "good") else "No", "family": f}
            for f in ("a", "b", "c") for w in ("great", "terrible", "good", "bad")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    for method in ("fedtt", "fedtt+", "lora"):
        client_module._session.cache_clear()
        keys = {"task": "custom", "task-kind": "generation", "train-file": str(path), "dev-file": str(path),
                "method": method, "partition": "dirichlet", "partition-column": "family", "max-length": 32}
        _, _, lines = run_app(tmp_path / method, tiny_llama_dir, tmp_path, **keys)
        assert [x["round"] for x in lines] == [0, 1, 2]
        assert all(x["replies"] == 3 and x["errors"] == 0 for x in lines[1:])
        assert all(np.isfinite(x["perplexity"]) and 0 <= x["exact_match"] <= 1 for x in lines)


def test_a_saved_run_reproduces_the_servers_evaluation_and_answers_prompts(tmp_path, tiny_llama_dir, capsys):
    from test_app_inprocess import run_app

    from fedtt_flwr import client as client_module
    from fedtt_flwr.checkpoint import load_run
    from fedtt_flwr.cli import main
    from fedtt_flwr.methods.build import prompt_task
    from fedtt_flwr.train import evaluate, make_loader, tokenize

    client_module._session.cache_clear()
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Is it {w}", "output": "Yes" if w == "great" else "No"}) +
                            "\n" for w in ("great", "terrible", "bad") * 6))
    keys = {"task": "custom", "task-kind": "generation", "train-file": str(path), "dev-file": str(path),
            "partition": "iid", "max-length": 32, "lr": 0.05}
    _, folder, lines = run_app(tmp_path, tiny_llama_dir, tmp_path, **keys)
    model, tokenizer, cfg = load_run(folder)
    data = tokenize(load_split(task_of(cfg), "dev"), tokenizer, cfg.max_length, prompt_task(cfg))
    again = evaluate(model, make_loader(data, tokenizer, cfg.eval_batch_size, shuffle=False, prompt_task="x"),
                     task_of(cfg), torch.device("cpu"))
    assert again["exact_match"] == lines[-1]["exact_match"]
    assert again["perplexity"] == pytest.approx(lines[-1]["perplexity"], rel=1e-5)
    assert main(["generate", "--run", str(folder), "Is it great", "Is it bad"]) == 0
    answers = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [a["prompt"] for a in answers] == ["Is it great", "Is it bad"]
    assert all(isinstance(a["answer"], str) for a in answers)
    assert main(["generate", "--run", str(folder), "--base", "--device", "cpu", "Is it great"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["prompt"] == "Is it great"


def test_the_instruction_mix_is_built_from_the_data_folder_deterministically(shared_data, tmp_path):
    from fedtt_flwr.instructions import FAMILIES, build, write

    mix = build(str(shared_data), per_family=12, dev_per_family=4, seed=3)
    assert build(str(shared_data), per_family=12, dev_per_family=4, seed=3) == mix
    assert build(str(shared_data), per_family=12, dev_per_family=4, seed=4) != mix
    assert {r["family"] for r in mix["train"]} == {f.name for f in FAMILIES} and len(mix["train"]) == 72
    assert {r["output"] for r in mix["train"]} <= {"positive", "negative", "yes", "no", "maybe", "first", "second"}
    paths = write(tmp_path, str(shared_data), per_family=12, dev_per_family=4, seed=3)
    ds = load_split(task_of(_task(paths[0], partition_column="family")), "train")
    assert len(ds) == 72 and set(ds["group"]) == {f.name for f in FAMILIES}


def test_eval_examples_bounds_the_evaluated_rows(tmp_path, tiny_llama_dir):
    from test_app_inprocess import run_app

    from fedtt_flwr import client as client_module

    client_module._session.cache_clear()
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Is it {w}", "output": "Yes"}) + "\n"
                            for w in ("great", "terrible", "bad") * 6))
    keys = {"task": "custom", "task-kind": "generation", "train-file": str(path), "dev-file": str(path),
            "partition": "iid", "max-length": 32, "eval-examples": 5, "fraction-evaluate": 1.0,
            "num-server-rounds": 1}
    _, _, lines = run_app(tmp_path, tiny_llama_dir, tmp_path, **keys)
    assert lines[-1]["em_examples"] == 5  # the server: the first 5 dev rows
    assert lines[-1]["fed_em_examples"] == 2  # each node: ceil(5 / 3) of its shard (a weighted mean over nodes)


def test_exact_match_counts_right_and_wrong_answers(records, tiny_llama_dir, monkeypatch):
    """With answers fixed (the right ones, then wrong ones) exact match is 1, then 0: the metric itself, not the
    tiny model's luck. And the prompt mask ends exactly where the rendered prompt does."""
    from fedtt_flwr import sft
    from fedtt_flwr.methods.build import build_model, prompt_task
    from fedtt_flwr.train import evaluate, make_loader, tokenize

    cfg = _task(records, model=str(tiny_llama_dir))
    model, tok = build_model(cfg)
    dev = load_split(task_of(cfg), "dev")
    data = tokenize(dev, tok, 64, prompt_task(cfg))
    for row, messages in zip(data, dev["text_a"], strict=True):
        assert row["input_ids"][: row["prompt_len"]] == prompt_ids(json.loads(messages), tok)
    loader = make_loader(data, tok, 2, shuffle=False, prompt_task="x")
    right = iter(["yes.", " No", "The yes"])  # normalised: "yes", "no", "yes"
    monkeypatch.setattr(sft, "generate_answers", lambda m, t, ids, mask, n: [next(right) for _ in range(len(ids))])
    assert evaluate(model, loader, task_of(cfg), torch.device("cpu"))["exact_match"] == 1.0
    monkeypatch.setattr(sft, "generate_answers", lambda m, t, ids, mask, n: ["maybe"] * len(ids))
    assert evaluate(model, loader, task_of(cfg), torch.device("cpu"))["exact_match"] == 0.0


def test_parquet_may_mix_alpaca_and_chat_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mix.parquet"
    rows = [RECORDS[0], RECORDS[2]]  # each row's absent columns become nulls in the file
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in ("instruction", "input", "output", "messages")}),
                   path)
    ds = load_split(task_of(_task(path)), "train")
    assert ds["label"] == ["Yes", "Yes"] and json.loads(ds["text_a"][1])[0]["role"] == "system"


def test_a_personalised_run_is_not_loaded_as_a_model(tmp_path):
    from fedtt_flwr.checkpoint import load_run

    (tmp_path / "config.json").write_text(json.dumps({"run_config": {"method": "fedsa-lora", "old-key": 1}}))
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="fedsa-lora run: part of its model .* stayed on the nodes"):
        load_run(tmp_path)


def test_under_dp_each_examples_gradient_is_its_own_answer_loss(tmp_path, tiny_llama_dir):
    """DP-SGD's per-example gradients (Opacus, as dp_train_steps takes them) of an instruction batch equal each
    example's own gradient of its mean answer-token loss, computed alone: no example's weight depends on the
    others' answer lengths (a causal LM's batch loss, the mean over all answer tokens, would make it)."""
    from opacus.grad_sample import GradSampleModule

    from fedtt_flwr.methods import build_model
    from fedtt_flwr.privacy import _dp_loss
    from fedtt_flwr.train import make_loader

    path = tmp_path / "answers.jsonl"
    rows = [{"instruction": "Is it great", "output": "Yes"}, {"instruction": "Was it bad", "output": "No it was good"},
            {"instruction": "Say more", "input": "the movie", "output": "the movie was really quite good"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _task(path, model=str(tiny_llama_dir), max_length=48)
    model, tok = build_model(cfg)
    data = encode_sft(load_split(task_of(cfg), "train"), tok, cfg.max_length)
    batch = next(iter(make_loader(data, tok, 3, shuffle=True, seed=0)))
    assert len({int(n) for n in (batch["labels"] != -100).sum(1)}) > 1  # answers of different lengths
    model.train()
    gsm = GradSampleModule(model, force_functorch=True, loss_reduction="mean", strict=False)
    _dp_loss(gsm, batch).backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    per_sample = {n: p.grad_sample.clone() for n, p in trained.items()}
    gsm.to_standard_module()
    for i in range(3):
        model.zero_grad(set_to_none=True)
        width = int(batch["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :width] for k, v in batch.items()}
        _dp_loss(model, one).backward()
        for n, p in trained.items():
            torch.testing.assert_close(per_sample[n][i], p.grad, atol=1e-5, rtol=1e-4, msg=n)
