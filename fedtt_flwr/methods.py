"""What trains and travels for each method, on one model builder shared by the server and the clients.

| method | trains and travels |
|---|---|
| ``fedtt``, ``fedtt+`` | TT adapter cores (+ biases when on) and the head; FedTT+ a scheduled subset per round |
| ``adapter`` | a dense (Houlsby) adapter at the same placement and bottleneck, and the head |
| ``lora`` (FedIT) | LoRA A and B (peft) on query/value, and the head |
| ``ffa-lora`` | LoRA B and the head; A stays frozen at its seeded random init and never travels |
| ``rolora`` | LoRA A (odd rounds) or B (even rounds), and the head (the strategy alternates) |
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .adapters import add_tt_adapters, head_param_names, norm_param_names
from .config import RunConfig
from .data import get_task
from .models import load_model, model_config, set_mean_pooling, trained_pooling
from .prompts import CandidateScorer, choice_ids, get_prompt, is_decoder_only
from .report import lora_targets

LORA_METHODS = ("lora", "ffa-lora", "rolora")
PEFT_PREFIX = "base_model.model."


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, freeze_a: bool = False,
             train_head: bool = True, train_layernorm: bool | str = False) -> nn.Module:
    """Wrap ``model`` with peft LoRA on its query/value projections (peft's default targets), freeze the
    backbone, and record the travelling tensors (A unless ``freeze_a``, B, the head, the norms chosen by
    ``train_layernorm`` as for TT adapters) like :func:`add_tt_adapters` does, so :func:`get_adapter_state`
    works the same."""
    from peft import LoraConfig, get_peft_model

    head = set(head_param_names(model)) if train_head else set()
    head |= norm_param_names(model, train_layernorm)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=lora_targets(model), lora_dropout=0.0, bias="none")
    wrapped = get_peft_model(model, config)
    travelling = []
    for name, p in wrapped.named_parameters():
        is_a, is_b = ".lora_A." in name, ".lora_B." in name
        trains = (is_b or (is_a and not freeze_a)) or name.removeprefix(PEFT_PREFIX) in head
        p.requires_grad_(trains)
        if trains:
            travelling.append(name)
    wrapped.fedtt_config = None
    wrapped.fedtt_state_names = tuple(travelling)
    return wrapped


@functools.lru_cache(maxsize=16)
def _model_type(model: str) -> str:
    return model_config(model).model_type


def prompt_task(cfg: RunConfig) -> str | None:
    """The task name when the run scores prompt answers with a causal LM (``task-format``; ``auto``:
    decoder-only architectures), else None (a classification head)."""
    if cfg.task_format == "auto":
        return cfg.task if is_decoder_only(_model_type(cfg.model)) else None
    return cfg.task if cfg.task_format == "prompt" else None


def head_pooling(cfg: RunConfig) -> Literal["cls", "mean"]:
    """What a classification head reads (``pooling`` resolved): ``auto`` is the masked token mean for a BERT
    checkpoint whose sentence-transformers folder says it was trained that way, else the [CLS] pooler."""
    if cfg.pooling != "auto":
        return cfg.pooling
    if trained_pooling(cfg.model) == "mean" and model_config(cfg.model).model_type == "bert":
        return "mean"
    return "cls"


def build_model(cfg: RunConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The run's model with the method's trainable modules. Seeded, and the same code on the server and
    on every client, so tensors that never travel (FFA-LoRA's A) are identical everywhere. A decoder
    becomes a :class:`CandidateScorer` (its LM head frozen, no new head)."""
    torch.manual_seed(cfg.seed)
    labels = len(get_task(cfg.task).labels)
    if prompt_task(cfg) is not None:
        if cfg.pooling == "mean":
            raise ValueError(f"pooling = 'mean' is for a classification head; {cfg.model} scores prompt answers "
                             f"with its LM head (task-format = '{cfg.task_format}'): use pooling = 'auto', or "
                             f"task-format = 'classifier' for a head")
        prompt = get_prompt(cfg.task)  # a task without a template stops here, before the model loads
        hf, tokenizer = load_model(cfg.model, "causal-lm", dtype=cfg.dtype)
        model = CandidateScorer(hf, choice_ids(tokenizer, prompt))
        model.fedtt_source = {**hf.fedtt_source, "prompt_task": cfg.task, "num_labels": labels}
    else:
        hf, tokenizer = load_model(cfg.model, "classification", num_labels=labels, dtype=cfg.dtype)
        if head_pooling(cfg) == "mean":
            set_mean_pooling(hf)
        model = hf
    if cfg.gradient_checkpointing:  # non-reentrant: works although the frozen inputs need no gradient
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method in LORA_METHODS:
        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha, freeze_a=cfg.method == "ffa-lora",
                         train_layernorm=cfg.layernorm())
    else:
        add_tt_adapters(model, cfg.adapter_config())
    return model, tokenizer
