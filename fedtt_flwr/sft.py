"""Instruction tuning of decoder LMs (``task-kind = generation``): the prompt through the tokenizer's chat template
(or :data:`PLAIN_TEMPLATE` when it has none), the loss on the response tokens only, and evaluation by the responses'
loss, perplexity and exact match of greedy answers.

TRL's ``SFTTrainer`` is not used: training here is a fixed number of optimizer steps per federated round inside
the ClientApp (with FedProx, DP-SGD and the adapters' own state handling), which a Trainer that owns its loop,
optimizer and schedule does not fit; the data handling is the few lines below, done the way TRL does it
(completion-only loss, right padding for training, left padding for generation).
"""

from __future__ import annotations

import json
import math
import re
import string

import torch
from datasets import Dataset
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

#: the prompt of a tokenizer without a chat template (Alpaca's), one block per turn
PLAIN_TEMPLATE = {"system": "{content}\n\n", "user": "### Instruction:\n{content}\n\n",
                  "assistant": "### Response:\n{content}\n\n"}
PLAIN_ANSWER = "### Response:\n"
#: exact match is scored on references of at most this many words (short answers: a label, a number, a name)
EM_MAX_WORDS = 5
IGNORE = -100


def prompt_ids(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids of a prompt that the answer follows: the chat template with its generation prompt, or the
    plain template (with the tokenizer's BOS, if it adds one)."""
    if tokenizer.chat_template:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)  # transformers 5: a BatchEncoding
    text = "".join(PLAIN_TEMPLATE[m["role"]].format(content=m["content"].strip()) for m in messages) + PLAIN_ANSWER
    return tokenizer(text)["input_ids"]


def response_ids(response: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The answer's tokens and the end-of-sequence token, so the model learns to stop."""
    ids = tokenizer(response.strip(), add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def fit_prompt(messages: list[dict], tokenizer: PreTrainedTokenizerBase, budget: int) -> list[int]:
    """The prompt's ids in at most ``budget`` tokens: the middle of its longest message goes (an instruction sits at
    its start, a question at its end), then the template is applied again, so its markers stay whole."""
    ids = prompt_ids(messages, tokenizer)
    for _ in range(4):
        excess = len(ids) - budget
        if excess <= 0:
            return ids
        i = max(range(len(messages)), key=lambda k: len(messages[k]["content"]))
        tokens = tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"]
        kept = max(len(tokens) - excess - 4, 0)  # a few spare: the joint " ... " and re-tokenization
        head = min(kept // 3, 32)
        content = (tokenizer.decode(tokens[:head]) + " ... " + tokenizer.decode(tokens[len(tokens) - (kept - head):])
                   if kept > 0 else "")
        messages = [*messages[:i], {**messages[i], "content": content}, *messages[i + 1:]]
        ids = prompt_ids(messages, tokenizer)
    return ids[len(ids) - budget:]  # the template alone is longer than the budget: its end, where the answer starts


def encode_sft(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """``input_ids`` (prompt + response), ``labels`` (-100 on the prompt: only the response carries loss) and
    ``prompt_len``. Too long: the response keeps up to half of ``max_length`` (its end is cut), the prompt loses the
    middle of its longest message (:func:`fit_prompt`)."""

    def encode(batch: dict) -> dict:
        out: dict[str, list] = {"input_ids": [], "labels": [], "prompt_len": []}
        for messages, response in zip(batch["text_a"], batch["label"], strict=True):
            messages = json.loads(messages)
            prompt, answer = prompt_ids(messages, tokenizer), response_ids(response, tokenizer)
            if len(prompt) + len(answer) > max_length:
                answer = answer[: max(max_length // 2, max_length - len(prompt))]
                prompt = fit_prompt(messages, tokenizer, max_length - len(answer))
            out["input_ids"].append(prompt + answer)
            out["labels"].append([IGNORE] * len(prompt) + answer)
            out["prompt_len"].append(len(prompt))
        return out

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def is_sft(dataset: Dataset) -> bool:
    return "prompt_len" in dataset.column_names


class SFTCollator:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` (padding carries no loss); for evaluation also each
    prompt left-padded (``gen_prompt_ids``/``gen_prompt_mask``: every prompt ends where the answer begins) and the
    reference answer (``gen_reference``, padded with -100)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, generation: bool = False) -> None:
        self.tokenizer, self.generation = tokenizer, generation
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.generation:
            prompts = [f["input_ids"][: f["prompt_len"]] for f in features]
            answers = [[t for t in f["labels"][f["prompt_len"]:] if t != self.tokenizer.eos_token_id]
                       for f in features]
            pw, aw = max(len(p) for p in prompts), max(max(len(a) for a in answers), 1)
            batch["gen_prompt_ids"] = torch.full((len(features), pw), self.pad, dtype=torch.long)
            batch["gen_prompt_mask"] = torch.zeros((len(features), pw), dtype=torch.long)
            batch["gen_reference"] = torch.full((len(features), aw), IGNORE, dtype=torch.long)
            for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
                batch["gen_prompt_ids"][i, pw - len(p):] = torch.tensor(p)
                batch["gen_prompt_mask"][i, pw - len(p):] = 1
                batch["gen_reference"][i, : len(a)] = torch.tensor(a, dtype=torch.long)
        return batch


def normalize(text: str) -> str:
    """Lower case, no punctuation, articles or extra spaces (SQuAD's answer normalisation)."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def response_loss(model: nn.Module, batch: dict) -> tuple[float, int]:
    """Summed cross-entropy over the response tokens and their count (token-weighted, unlike a batch mean). The LM
    head runs only where a response token is predicted: a full-vocabulary projection of every position of an
    evaluation batch would take gigabytes."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    rows, cols = (batch["labels"][:, 1:] != IGNORE).nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()
    return float(F.cross_entropy(logits, batch["labels"][rows, cols + 1], reduction="sum")), int(rows.numel())


#: end-of-turn markers of common chat templates: an answer stops at them too
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


def stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token an answer ends at: EOS, the model's generation-config EOS ids, the template's end of turn."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list | tuple) else {configured}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN if t in vocab}
    return sorted(i for i in ids if i is not None)


def generate_answers(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt_ids: torch.Tensor,
                     prompt_mask: torch.Tensor, max_new_tokens: int) -> list[str]:
    """Greedy answers to left-padded prompts, each cut at its first stop token (:func:`stop_ids`)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids(model, tokenizer)
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad, eos_token_id=stops)
    answers = []
    for row in out[:, prompt_ids.shape[1]:].tolist():
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        answers.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return answers


@torch.no_grad()
def evaluate_generation(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
    """The responses' mean token loss and perplexity, and the exact match of greedy answers on the references of at
    most :data:`EM_MAX_WORDS` words (``em_examples`` of them)."""
    tokenizer = loader.collate_fn.tokenizer
    model.eval()
    total, tokens, hits, scored, examples = 0.0, 0, 0, 0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, n = response_loss(model, batch)
        total, tokens, examples = total + loss, tokens + n, examples + batch["input_ids"].shape[0]
        references = [tokenizer.decode([t for t in row.tolist() if t != IGNORE], skip_special_tokens=True)
                      for row in batch["gen_reference"]]
        short = [i for i, r in enumerate(references) if len(r.split()) <= EM_MAX_WORDS]
        if not short:
            continue
        longest = int((batch["gen_reference"][short] != IGNORE).sum(-1).max())
        answers = generate_answers(model, tokenizer, batch["gen_prompt_ids"][short], batch["gen_prompt_mask"][short],
                                   longest + 2)
        hits += sum(normalize(a) == normalize(references[i]) for a, i in zip(answers, short, strict=True))
        scored += len(short)
    mean = total / max(tokens, 1)
    return {"exact_match": hits / scored if scored else 0.0, "perplexity": math.exp(min(mean, 50.0)), "loss": mean,
            "num_examples": examples, "em_examples": scored}
