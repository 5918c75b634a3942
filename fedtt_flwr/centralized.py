"""Centralized (non-federated) fine-tune, TT adapters or a baseline: the upper reference for federated runs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from transformers import get_linear_schedule_with_warmup

from .adapters import count_parameters
from .checkpoint import save_adapter
from .config import AUTO_LR, RunConfig
from .data import load_task, with_labels
from .methods.build import build_model, prompt_task
from .methods.registry import get_method
from .models import pick_device
from .tasks import CUSTOM, task_of
from .train import cycle, evaluate, make_loader, tokenize, train_steps


class FinetuneConfig(RunConfig):
    #: the keys a centralized run reads (the federation's own keys are accepted and ignored)
    USED: ClassVar[tuple[str, ...]] = ("data_dir", "max_length", "batch_size", "lr", "max_grad_norm", "output_dir",
                                       "physical_batch", "train_size", "epochs", "warmup", "task_name", "train_file",
                                       "dev_file", "data_format", "hub_dataset", "hub_config", "hub_train_split",
                                       "hub_dev_split", "text_columns", "label_column", "choice_columns", "metrics",
                                       "bad_rows")

    """A centralized reference fine-tune: every key of :class:`RunConfig` (one model, validated the same way),
    plus the budget of one centralized run. Two defaults differ from a federated run's, as the reference runs
    in docs/tensorized-adapters.md were measured: batches of 32 and LoRETTA's init."""

    train_size: int = Field(10_000, ge=1, description="the first N shuffled training examples")
    epochs: float = Field(2.0, gt=0)
    warmup: float = Field(0.06, ge=0, lt=1, description="fraction of steps with linear warm-up, then linear decay")
    batch_size: int = Field(32, ge=1)
    adapter_init: Literal["auto", "loretta", "near-identity"] = "loretta"

    @field_validator("method")
    @classmethod
    def _centralized_method(cls, v: str) -> str:
        from .methods.registry import get_method

        method = get_method(v)
        if method.rounds != "all" or method.personal:
            raise ValueError(f"{v} is a federated variant (its rounds or its local tensors only exist with "
                             "clients); centrally it is the same as fedtt or lora: use those")
        return v


def finetune(cfg: FinetuneConfig) -> dict:
    """Train on the first ``train_size`` shuffled training examples; evaluate on the dev split."""
    device = pick_device(cfg.device)
    task = with_labels(task_of(cfg), cfg.data_dir or None)
    if task.labels is not None and not cfg.labels and cfg.task == CUSTOM:
        cfg = cfg.model_copy(update={"labels": ",".join(task.labels)})  # the model's head needs its width
    train, dev, note = load_task(task, cfg.data_dir or None)  # QNLI, BoolQ here: dev carved 80/20
    if note:
        print(f"[fedtt] {note}", flush=True)
    train = train.shuffle(seed=cfg.seed).select(range(min(cfg.train_size, len(train))))
    model, tokenizer = build_model(cfg)
    model.to(device)
    prompts = prompt_task(cfg)
    train_loader = make_loader(tokenize(train, tokenizer, cfg.max_length, prompts), tokenizer, cfg.batch_size, True,
                               cfg.seed, prompts)
    dev_loader = make_loader(tokenize(dev, tokenizer, cfg.max_length, prompts), tokenizer, 128, False,
                             prompt_task=prompts)
    steps = math.ceil(cfg.epochs * len(train_loader))
    lr = AUTO_LR["adamw"] if cfg.lr == "auto" else cfg.lr  # centralized runs always train with AdamW, never DP
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * steps), steps)
    print(f"fine-tuning {cfg.model} ({cfg.method}) on {cfg.task}: {len(train)} examples, {steps} steps, "
          f"device {device}", flush=True)
    t0 = time.perf_counter()
    stats = train_steps(model, cycle(train_loader), optimizer, steps, device,
                        log_every=max(steps // 10, 1), scheduler=scheduler,
                        max_grad_norm=cfg.max_grad_norm or None, physical_batch=cfg.physical_batch)
    train_s = time.perf_counter() - t0
    metrics = evaluate(model, dev_loader, task, device)
    rank = f"r{cfg.lora_rank}" if get_method(cfg.method).family == "lora" else f"r{cfg.rank}"
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
