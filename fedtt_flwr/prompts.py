"""Decoder models (LLaMA family) answer a task by scoring candidate answers after a prompt.

A causal LM has no classification head: every example becomes a prompt (``PROMPTS``: the FedTT paper's
RTE, BoolQ and CB templates, plus SST-2, MRPC, QNLI and CoLA in the same style), each label a fixed answer
appended to it.
A candidate's score is the mean log-likelihood of its tokens (length-normalised, so answers of different
token counts compete fairly); training is cross-entropy over the candidates' scores, evaluation picks the
most likely one. The LM head stays dense and frozen: only what the adapters change moves the scores.

:class:`CandidateScorer` wraps the LM so that it looks like a sequence classifier to the rest of the code
(``model(**batch)`` gives ``.loss`` and ``.logits`` of shape ``(batch, num_choices)``), and
:func:`encode_prompts` / :class:`PromptCollator` make the batches it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .data import get_task


@dataclass(frozen=True)
class Prompt:
    """``template`` is formatted with ``a`` (text_a) and ``b`` (text_b); ``choices`` holds the answer
    appended for each label id, in the task's label order (leading spaces are part of the answer)."""

    template: str
    choices: tuple[str, ...]

    def render(self, a: str, b: str) -> str:
        return self.template.format(a=a.strip(), b=b.strip())


_YES_NO = 'Yes or No?\n'
PROMPTS: dict[str, Prompt] = {
    "sst2": Prompt("{a} It was", (" terrible", " great")),  # labels 0 negative, 1 positive
    "rte": Prompt('{a}\nDoes this mean that "{b}" is true? ' + _YES_NO, ("Yes", "No")),
    "superglue-rte": Prompt('{a}\nDoes this mean that "{b}" is true? ' + _YES_NO, ("Yes", "No")),
    "boolq": Prompt("{a} {b}?\n", ("No", "Yes")),  # labels False, True
    "cb": Prompt('Suppose {a} Can we infer that "{b}"? Yes, No, or Maybe?\n', ("Yes", "No", "Maybe")),
    "mrpc": Prompt('{a}\nDoes this mean the same as "{b}"? ' + _YES_NO, ("No", "Yes")),
    "qnli": Prompt('{b}\nDoes this sentence answer the question "{a}"? ' + _YES_NO, ("Yes", "No")),
    "cola": Prompt("{a}\nIs this sentence grammatical? " + _YES_NO, ("No", "Yes")),
}


def get_prompt(task: str) -> Prompt:
    if task not in PROMPTS:
        raise ValueError(f"task {task!r} has no prompt template for decoder models; templates exist for "
                         f"{', '.join(PROMPTS)}")
    prompt, labels = PROMPTS[task], get_task(task).labels
    if len(prompt.choices) != len(labels):
        raise ValueError(f"prompt for {task!r} has {len(prompt.choices)} answers for {len(labels)} labels")
    return prompt


def is_decoder_only(model_type: str) -> bool:
    """A causal LM with no masked-LM variant (LLaMA, Mistral, Qwen2, ...; not BERT, whose LM head
    classes include a causal one)."""
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def choice_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[list[int]]:
    """Token ids of every answer, encoded on their own (no special tokens)."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in prompt.choices]
    empty = [c for c, x in zip(prompt.choices, ids, strict=True) if not x]
    if empty:
        raise ValueError(f"answer(s) {empty} encode to no token with this tokenizer")
    return ids


def encode_prompts(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, max_length: int) -> Dataset:
    """Columns ``input_ids`` (the prompt) and ``label``. Long prompts lose their beginning, not their end
    (where the question and the answer slot are); a leading BOS token is kept."""
    prompt = get_prompt(task)
    budget = max_length - max(len(x) for x in choice_ids(tokenizer, prompt))
    if budget < 2:
        raise ValueError(f"max-length {max_length} leaves no room for the prompt of task {task!r}")
    bos = tokenizer.bos_token_id

    def clip(ids: list[int]) -> list[int]:
        if len(ids) <= budget:
            return ids
        if bos is not None and ids[0] == bos:
            return [bos, *ids[len(ids) - budget + 1:]]
        return ids[len(ids) - budget:]

    def encode(batch: dict) -> dict:
        texts = [prompt.render(a, b) for a, b in zip(batch["text_a"], batch["text_b"], strict=True)]
        return {"input_ids": [clip(x) for x in tokenizer(texts)["input_ids"]]}

    return dataset.map(encode, batched=True, remove_columns=["text_a", "text_b"])


class PromptCollator:
    """Prompts left-padded into one batch (``input_ids``, ``attention_mask``, ``labels``): every prompt
    ends at the last column, where the answers begin."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
        labels = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class CandidateScorer(nn.Module):
    """A causal LM as a classifier over fixed answers: ``logits[b, c]`` is the mean log-probability of
    answer ``c``'s tokens after prompt ``b``.

    The prompts run once; the last position's hidden state scores every answer's first token. Only
    answers longer than one token run their remaining tokens on the prompts' KV cache (one row per
    prompt and answer). The LM head is applied only where an answer token is predicted (a full
    vocabulary projection of every position would dominate memory)."""

    def __init__(self, lm: nn.Module, answers: list[list[int]]) -> None:
        super().__init__()
        if not answers or any(not a for a in answers):
            raise ValueError("every answer needs at least one token")
        self.lm = lm
        self.answers = [list(a) for a in answers]
        self.num_choices = len(answers)

    @property
    def config(self):  # peft and the parameter report read the architecture from here
        return self.lm.config

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **_: object) -> SequenceClassifierOutput:
        decoder, head = self.lm.get_decoder(), self.lm.get_output_embeddings()
        longest = max(len(a) for a in self.answers)
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=longest > 1)
        first = head(out.last_hidden_state[:, -1]).float().log_softmax(-1)  # (B, V)
        dev = first.device
        logits = first[:, torch.tensor([a[0] for a in self.answers], device=dev)]  # (B, C)
        if longest > 1:
            logits = logits + self._rest(decoder, head, out.past_key_values, input_ids, attention_mask, longest)
        lengths = torch.tensor([len(a) for a in self.answers], device=dev, dtype=logits.dtype)
        logits = logits / lengths
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _rest(self, decoder: nn.Module, head: nn.Module, cache, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
              longest: int) -> torch.Tensor:
        """Summed log-probabilities of every answer's tokens after its first, ``(B, C)``. Without a cache
        (gradient checkpointing turns it off) the prompts run again, once per answer."""
        batch, c, dev = prompt_mask.shape[0], self.num_choices, prompt_mask.device
        feed = torch.zeros((c, longest - 1), dtype=torch.long, device=dev)  # answer tokens but the last
        want = torch.full((c, longest - 1), -100, dtype=torch.long, device=dev)  # the tokens they predict
        for i, a in enumerate(self.answers):
            feed[i, : len(a) - 1] = torch.tensor(a[:-1], device=dev)
            want[i, : len(a) - 1] = torch.tensor(a[1:], device=dev)
        feed, want = feed.repeat(batch, 1), want.repeat(batch, 1)
        mask = torch.cat([prompt_mask.repeat_interleave(c, 0), (want >= 0).long()], dim=1)
        if cache is not None:
            cache.batch_repeat_interleave(c)
        else:
            feed = torch.cat([prompt_ids.repeat_interleave(c, 0), feed], dim=1)
        hidden = decoder(input_ids=feed, attention_mask=mask, past_key_values=cache).last_hidden_state
        hidden = hidden[:, -(longest - 1):]
        logp = head(hidden).float().log_softmax(-1)
        valid = want >= 0
        token = logp.gather(-1, want.clamp(min=0)[..., None]).squeeze(-1) * valid
        return token.sum(-1).view(batch, c)


# --- multiple choice: each example's own candidates (COPA) ----------------------------------------------------

def encode_choice_prompts(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Columns ``input_ids`` (the context), ``choice_ids`` (each candidate's tokens, after a space) and ``label``.
    A long context loses its beginning; a long candidate its end."""
    bos = tokenizer.bos_token_id

    def encode(batch: dict) -> dict:
        contexts = tokenizer([" ".join(x for x in (a, b) if x) for a, b in zip(batch["text_a"], batch["text_b"],
                                                                                  strict=True)])["input_ids"]
        out_ctx, out_choices = [], []
        for ids, choices in zip(contexts, batch["choices"], strict=True):
            cands = [tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"][: max_length // 2] or
                     [tokenizer.eos_token_id] for c in choices]
            budget = max(max_length - max(len(c) for c in cands), 2)
            if len(ids) > budget:
                ids = [bos, *ids[len(ids) - budget + 1:]] if bos is not None and ids[0] == bos else ids[-budget:]
            # a candidate's first token is predicted from the position before it: the context needs one
            out_ctx.append(ids or [bos if bos is not None else tokenizer.eos_token_id])
            out_choices.append(cands)
        return {"input_ids": out_ctx, "choice_ids": out_choices}

    return dataset.map(encode, batched=True, remove_columns=[c for c in ("text_a", "text_b", "choices")
                                                             if c in dataset.column_names])


class ChoicePromptCollator:
    """Every (context, candidate) sequence of a batch, right-padded: ``input_ids``/``attention_mask`` of shape
    ``(batch * choices, T)``, ``target_mask`` marking the positions whose next token is a candidate token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        seqs, starts = [], []
        for f in features:
            for cand in f["choice_ids"]:
                seqs.append([*f["input_ids"], *cand])
                starts.append(len(f["input_ids"]))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        target = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            target[i, start - 1: len(s) - 1] = True  # position j predicts token j + 1
        labels = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "target_mask": target, "labels": labels}


class ChoiceScorer(nn.Module):
    """A causal LM choosing among each example's own candidates: ``logits[b, c]`` is the mean log-probability of
    candidate ``c``'s tokens after context ``b`` (length-normalised, as :class:`CandidateScorer`). The LM head runs
    only where a candidate token is predicted."""

    def __init__(self, lm: nn.Module, num_choices: int) -> None:
        super().__init__()
        self.lm, self.num_choices = lm, num_choices

    @property
    def config(self):
        return self.lm.config

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor,
                labels: torch.Tensor | None = None, **_: object) -> SequenceClassifierOutput:
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows, cols = target_mask.nonzero(as_tuple=True)
        logp = self.lm.get_output_embeddings()(hidden[rows, cols]).float().log_softmax(-1)
        token = logp.gather(-1, input_ids[rows, cols + 1][:, None]).squeeze(-1)
        total = torch.zeros(input_ids.shape[0], device=token.device).index_add(0, rows, token)
        logits = (total / target_mask.sum(-1).clamp(min=1)).view(-1, self.num_choices)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
