"""Tokenization, local training steps and evaluation for sequence classification.

The same functions serve the centralized fine-tune (``fedtt-flwr finetune``) and the ClientApp. With
``prompt_task`` (decoder models) the examples become prompts whose candidate answers are scored
(:mod:`fedtt_flwr.prompts`); training and evaluation do not change.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from torch import nn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from .data import compute_metrics
from .prompts import ChoicePromptCollator, PromptCollator, encode_choice_prompts, encode_prompts
from .sft import SFTCollator, encode_sft, evaluate_generation, is_sft
from .tasks import TaskSpec

#: bump when tokenization changes outside this module, prompts.py and sft.py (their source is in the key)
TOKEN_CACHE_VERSION = "1"


def tokenize_cached(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                    prompt_task: str | None = None, cache: Path | None = None) -> Dataset:
    """:func:`tokenize`, kept on disk under ``cache`` (default: the model cache's ``tokenized/``) by content: the
    key hashes the rows themselves, the whole tokenizer (its serialized vocabulary and rules) and the settings,
    so a changed file, tokenizer or max-length is a new entry and nothing stale is ever read. A cold ClientApp
    or worker then skips the tokenization (the largest part of its start). Slow (Python) tokenizers are not
    cached."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or os.environ.get("FEDTT_NO_TOKEN_CACHE"):
        return tokenize(dataset, tokenizer, max_length, prompt_task)
    import pyarrow as pa

    from .models import cache_dir

    rules = json.loads(backend.to_str())
    for state in ("truncation", "padding"):  # the last call's settings, not the tokenizer's identity
        rules.pop(state, None)
    digest = hashlib.sha256()
    for part in (TOKEN_CACHE_VERSION, json.dumps(rules, sort_keys=True),
                 repr(sorted(tokenizer.special_tokens_map.items())), str(getattr(tokenizer, "chat_template", None)),
                 tokenizer.padding_side, tokenizer.truncation_side, str(max_length), str(prompt_task),
                 str(tokenizer.model_max_length), _encoders_source()):
        digest.update(part.encode() + b"\0")
    sink = pa.BufferOutputStream()
    table = dataset.with_format("arrow")[:]  # the rows as they are now (a partition's indices applied)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest.update(sink.getvalue())
    folder = (cache or cache_dir() / "tokenized") / digest.hexdigest()[:32]
    if (folder / "dataset_info.json").exists():
        try:
            return load_from_disk(str(folder), keep_in_memory=True)
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged entry: tokenize again
    out = tokenize(dataset, tokenizer, max_length, prompt_task)
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        out.save_to_disk(str(tmp))
        os.replace(tmp, folder)  # atomic; a concurrent node writing the same entry first makes this fail, harmlessly
    except OSError:  # no room, no permission, or that race: this process keeps what it tokenized
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@functools.cache
def _encoders_source() -> str:
    """The code that turns rows into tokens (this module, the prompt templates, the SFT formats): editing any of it
    makes new cache entries, without anyone having to remember a version bump."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in ("train.py", "prompts.py", "sft.py"))).hexdigest()


def _encode_choices(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Multiple choice for an encoder: one (context, candidate) pair per candidate, ``input_ids`` of shape
    ``(choices, length)`` per example."""
    def encode(batch: dict) -> dict:
        counts = [len(c) for c in batch["choices"]]
        contexts = [" ".join(x for x in (a, b) if x) for a, b in zip(batch["text_a"], batch["text_b"], strict=True)]
        firsts = [ctx for ctx, k in zip(contexts, counts, strict=True) for _ in range(k)]
        enc = tokenizer(firsts, [c for cs in batch["choices"] for c in cs], truncation=True, max_length=max_length)
        out: dict[str, list] = {k: [] for k in enc}
        start = 0
        for k in counts:
            for key in enc:
                out[key].append(enc[key][start:start + k])
            start += k
        return out

    return dataset.map(encode, batched=True, remove_columns=["text_a", "text_b", "choices"])


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
             prompt_task: str | None = None) -> Dataset:
    """Token ids for ``text_a`` (and ``text_b`` where a task has pairs), truncated to ``max_length``;
    with ``prompt_task``, the task's prompt (room left for the longest answer). Multiple choice (a ``choices``
    column): a pair per candidate (encoders), or the context and each candidate's tokens (decoders)."""
    extra = [c for c in dataset.column_names if c not in ("text_a", "text_b", "label", "choices")]
    dataset = dataset.remove_columns(extra)  # partition columns: the model reads none of them
    if dataset.features["label"].dtype == "string":  # instruction tuning: the label is the response
        return encode_sft(dataset, tokenizer, max_length)
    if "choices" in dataset.column_names:
        if prompt_task is not None:
            return encode_choice_prompts(dataset, tokenizer, max_length)
        return _encode_choices(dataset, tokenizer, max_length)
    if prompt_task is not None:
        return encode_prompts(dataset, tokenizer, prompt_task, max_length)
    pairs = any(dataset["text_b"][:50])

    def encode(batch: dict) -> dict:
        args = (batch["text_a"], batch["text_b"]) if pairs else (batch["text_a"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=["text_a", "text_b"])


class ChoiceCollator:
    """Encoder multiple choice: every candidate pair of a batch padded together, ``(batch, choices, length)``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        n = len(features[0]["input_ids"])
        keys = [k for k in features[0] if k != "label"]
        batch = self.tokenizer.pad([{k: f[k][i] for k in keys} for f in features for i in range(n)],
                                   return_tensors="pt")
        out = {k: v.view(len(features), n, -1) for k, v in batch.items()}
        out["labels"] = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        return out


def _nested(dataset: Dataset) -> bool:
    return len(dataset) > 0 and isinstance(dataset[0]["input_ids"][0], list)


def make_loader(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool, seed: int = 0,
    prompt_task: str | None = None,
) -> DataLoader:
    """Batches padded to the longest sequence in the batch (not to ``max_length``: much faster on CPU);
    with ``prompt_task``, prompts left-padded (they all end where the answers begin)."""
    generator = torch.Generator().manual_seed(seed)
    if is_sft(dataset):
        collate = SFTCollator(tokenizer, generation=not shuffle)  # evaluation loaders also generate answers
    elif "choice_ids" in dataset.column_names:
        collate = ChoicePromptCollator(tokenizer)
    elif _nested(dataset):
        collate = ChoiceCollator(tokenizer)
    elif prompt_task is not None:
        collate = PromptCollator(tokenizer)
    else:
        collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        dataset = dataset.with_format("torch")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def make_optimizer(params: list[nn.Parameter], name: str, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """The local optimizer: AdamW, or SGD with momentum. Under DP-SGD the noise reaches every coordinate,
    and Adam's per-coordinate normalisation turns pure noise into full-size steps; SGD scales it by lr."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use adamw or sgd")


def label_prior_shift(labels, num_classes: int, tau: float) -> torch.Tensor | None:
    """Logit adjustment for label skew (Menon et al., 2021; FedLC, Zhang et al., 2022): ``tau * log p_c`` of
    this client's label frequencies (add-one smoothed), added to the logits in the training loss only.
    The client then fits the class-balanced posterior instead of its own label mix, so the heads of clients
    with opposite majorities stop pulling the average to one class. None when ``tau`` is 0."""
    if tau == 0:
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes] + 1.0
    return torch.tensor(tau * np.log(counts / counts.sum()), dtype=torch.float32)


def batch_loss(model: nn.Module, batch: dict, logit_shift: torch.Tensor | None = None) -> torch.Tensor:
    """The model's cross-entropy on ``batch``; with ``logit_shift`` (see :func:`label_prior_shift`) the
    shift is added to the logits first."""
    if logit_shift is None:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()
    return nn.functional.cross_entropy(logits + logit_shift.to(logits.device), batch["labels"])


def pieces(batch: dict, size: int) -> list[dict]:
    """The batch's examples in pieces of at most ``size`` (every tensor is batch-first; a tensor with k rows per
    example, e.g. a decoder's k candidate answers, keeps an example's rows together). Examples go in order of
    length and each piece drops the padding columns that none of its rows uses, so a piece of short sentences
    costs what they cost rather than the batch's longest: an example's gradient does not depend on the piece it is
    in, nor on trailing padding, so the pieces' gradients add up to the batch's (up to the order of float
    additions)."""
    n = int(batch["labels"].shape[0])
    if n <= size:
        return [batch]
    per = {key: v.shape[0] // n for key, v in batch.items()}
    if any(v.shape[0] != per[key] * n or not per[key] for key, v in batch.items()):
        raise ValueError(f"physical-batch: a batch of {n} examples holds tensors of "
                         f"{sorted({v.shape[0] for v in batch.values()})} rows, not whole multiples of {n}")
    mask = batch.get("attention_mask")
    trim = mask is not None and mask.dim() == 2
    if trim:
        lengths = mask.sum(1).view(n, per["attention_mask"]).amax(1)
        order = torch.argsort(lengths, descending=True, stable=True)
    else:
        order = torch.arange(n)
    out = []
    for i in range(0, n, size):
        ex = order[i:i + size]
        piece = {key: v[(ex[:, None] * per[key] + torch.arange(per[key])).flatten()] for key, v in batch.items()}
        if trim:
            width, rows = mask.shape[1], piece["attention_mask"]
            used = int(rows.any(0).nonzero().max()) + 1 if bool(rows.any()) else width
            piece = {key: v[:, :used] if v.dim() >= 2 and v.shape[1] == width else v for key, v in piece.items()}
        out.append(piece)
    return out


def _loss_weight(batch: dict) -> int:
    """What the batch's loss is a mean over: its examples, or for a causal LM's token-level loss its labelled
    (shifted) tokens; a piece's loss times its share of that adds up to the whole batch's loss."""
    labels = batch["labels"]
    return int((labels[:, 1:] != -100).sum()) if labels.dim() == 2 else int(labels.shape[0])


def cycle(loader: DataLoader) -> Iterator[dict]:
    """Endless batches: local training counts optimizer steps, not epochs."""
    return itertools.chain.from_iterable(itertools.repeat(loader))


def train_steps(
    model: nn.Module,
    batches: Iterator[dict],
    optimizer: torch.optim.Optimizer,
    steps: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    log_every: int = 0,
    max_grad_norm: float | None = 1.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    proximal_mu: float = 0.0,
    logit_shift: torch.Tensor | None = None,
    physical_batch: int = 0,
) -> dict[str, float]:
    """Run ``steps`` optimizer steps; return the mean training loss and the number of examples seen.

    ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w_start||^2`` over the trainable tensors;
    ``logit_shift`` adjusts the logits of the loss (:func:`label_prior_shift`); a batch larger than
    ``physical_batch`` runs as :func:`pieces` whose gradients add up before the step (the same update; 512 SST-2
    sentences in sorted pieces of 64 took 3.5 s on 2 CPU cores against 25.4 s in one pass:
    benchmarks/physical_batch.py)."""
    model.train()
    losses, seen, t0 = [], 0, time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    for step in range(1, steps + 1):
        batch = next(batches)
        parts = pieces(batch, physical_batch) if physical_batch else [batch]
        total = max(_loss_weight(batch), 1)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, prox, used = 0.0, bool(anchors), False
        for part in parts:
            share = _loss_weight(part) / total if len(parts) > 1 else 1.0
            if share == 0:  # a piece with no answer token: nothing to learn, and its own mean would be 0 / 0
                continue
            part = {k: v.to(device) for k, v in part.items()}
            with _autocast(device, amp_dtype):
                loss = batch_loss(model, part, logit_shift) * share
            if prox:  # once per step
                prox = False
                loss = loss + 0.5 * proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors,
                                                                                            strict=True))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}; lower the learning rate")
            loss.backward()
            loss_sum += loss.item()
            used = True
        if not used:  # one pass over the whole batch would have given 0 / 0
            raise FloatingPointError(f"training loss became nan at step {step}: no example of the batch has a "
                                     "labelled token")
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss_sum)
        seen += batch["labels"].shape[0]
        if log_every and step % log_every == 0:
            rate = step / (time.perf_counter() - t0)
            print(f"  step {step}/{steps}  loss {np.mean(losses[-log_every:]):.4f}  {rate:.2f} steps/s", flush=True)
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "num_examples": seen}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, task: str | TaskSpec, device: torch.device,
    amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Task metrics (and mean loss) on a labelled loader: the predicted class or candidate, or the score; for
    instruction tuning the responses' loss, perplexity and exact match (:func:`fedtt_flwr.sft.evaluate_generation`)."""
    if isinstance(loader.collate_fn, SFTCollator):
        return evaluate_generation(model, loader, device)
    regression = getattr(task, "kind", None) == "regression"
    model.eval()
    preds, labels, losses = [], [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device, amp_dtype):
            out = model(**batch)
        losses.append(out.loss.float().item() * batch["labels"].shape[0])
        logits = out.logits.float()
        preds.append((logits.squeeze(-1) if regression else logits.argmax(-1)).cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    p, y = np.concatenate(preds), np.concatenate(labels)
    return {**compute_metrics(task, p, y), "loss": float(np.sum(losses) / max(len(y), 1)), "num_examples": len(y)}
