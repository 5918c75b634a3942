"""Centralized (non-federated) fine-tune, TT adapters or a baseline: the upper reference for federated runs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import get_linear_schedule_with_warmup

from .adapters import count_parameters
from .checkpoint import save_adapter
from .config import RunConfig
from .data import load_split
from .methods.build import build_model, prompt_task
from .models import pick_device
from .train import cycle, evaluate, make_loader, tokenize, train_steps


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "minilm"
    task: str = "sst2"
    method: Literal["fedtt", "adapter", "lora", "ffa-lora"] = Field(
        "fedtt", description="fedtt: TT adapters; adapter: dense adapter; lora / ffa-lora: peft LoRA on query/value")
    data_dir: str | None = Field(None, description="folder laid out like shared/data; None: $FEDTT_DATA_DIR, "
                                                     "../shared/data, or the hub")
    train_size: int = Field(10_000, ge=1)
    epochs: float = Field(2.0, gt=0)
    max_length: int = Field(64, ge=8)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    rank: int = Field(5, ge=1)
    lora_rank: int = Field(8, ge=1)
    adapter_bias: bool = False
    adapter_init: Literal["loretta", "near-identity"] = "loretta"
    train_layernorm: bool | Literal["weight", "auto"] = Field(
        "auto", description="LayerNorm gains ('weight'), gains and biases (true) or none; auto: as in the app")
    warmup: float = Field(0.06, ge=0, lt=1, description="fraction of steps with linear warm-up, then linear decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm; 0 turns it off")
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"


def finetune(cfg: FinetuneConfig) -> dict:
    """Train on the first ``train_size`` shuffled training examples; evaluate on the dev split."""
    device = pick_device(cfg.device)
    train = load_split(cfg.task, "train", cfg.data_dir).shuffle(seed=cfg.seed)
    train = train.select(range(min(cfg.train_size, len(train))))
    dev = load_split(cfg.task, "dev", cfg.data_dir)
    run_cfg = RunConfig(model=cfg.model, task=cfg.task, method=cfg.method, rank=cfg.rank, lora_rank=cfg.lora_rank,
                        adapter_bias=cfg.adapter_bias, adapter_init=cfg.adapter_init, seed=cfg.seed,
                        train_layernorm=cfg.train_layernorm)
    model, tokenizer = build_model(run_cfg)
    model.to(device)
    prompts = prompt_task(run_cfg)
    train_loader = make_loader(tokenize(train, tokenizer, cfg.max_length, prompts), tokenizer, cfg.batch_size, True,
                               cfg.seed, prompts)
    dev_loader = make_loader(tokenize(dev, tokenizer, cfg.max_length, prompts), tokenizer, 128, False,
                             prompt_task=prompts)
    steps = math.ceil(cfg.epochs * len(train_loader))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * steps), steps)
    print(f"fine-tuning {cfg.model} ({cfg.method}) on {cfg.task}: {len(train)} examples, {steps} steps, "
          f"device {device}", flush=True)
    t0 = time.perf_counter()
    stats = train_steps(model, cycle(train_loader), optimizer, steps, device,
                        log_every=max(steps // 10, 1), scheduler=scheduler,
                        max_grad_norm=cfg.max_grad_norm or None)
    train_s = time.perf_counter() - t0
    metrics = evaluate(model, dev_loader, cfg.task, device)
    rank = f"r{cfg.lora_rank}" if cfg.method in ("lora", "ffa-lora") else f"r{cfg.rank}"
    name = f"finetune-{cfg.model}-{cfg.task}-{cfg.method}-{rank}{'-bias' if cfg.adapter_bias else ''}-s{cfg.seed}"
    out = Path(cfg.output_dir).resolve() / name
    out.mkdir(parents=True, exist_ok=True)
    adapter_file = save_adapter(model.cpu(), out / "adapter.safetensors", task=cfg.task, method=cfg.method)
    result = {
        "config": cfg.model_dump(),
        "dev": metrics,
        "train_loss": stats["train_loss"],
        "steps": steps,
        "train_seconds": round(train_s, 1),
        "params": count_parameters(model),
        "adapter_file": str(adapter_file),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
