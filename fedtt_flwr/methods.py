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

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .adapters import add_tt_adapters, head_param_names
from .config import RunConfig
from .data import get_task
from .models import load_model
from .report import lora_targets

LORA_METHODS = ("lora", "ffa-lora", "rolora")
PEFT_PREFIX = "base_model.model."


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, freeze_a: bool = False,
             train_head: bool = True) -> nn.Module:
    """Wrap ``model`` with peft LoRA on its query/value projections (peft's default targets), freeze the
    backbone, and record the travelling tensors (A unless ``freeze_a``, B, the head) like
    :func:`add_tt_adapters` does, so :func:`get_adapter_state` works the same."""
    from peft import LoraConfig, get_peft_model

    head = set(head_param_names(model)) if train_head else set()
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


def build_model(cfg: RunConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The run's model with the method's trainable modules. Seeded, and the same code on the server and
    on every client, so tensors that never travel (FFA-LoRA's A) are identical everywhere."""
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, "classification", num_labels=len(get_task(cfg.task).labels),
                                  dtype=cfg.dtype)
    if cfg.method in LORA_METHODS:
        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha, freeze_a=cfg.method == "ffa-lora")
    else:
        add_tt_adapters(model, cfg.adapter_config())
    return model, tokenizer
