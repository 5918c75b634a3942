"""Adapter files: the travelling tensors in one safetensors file, with what is needed to rebuild the model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from .adapters import add_tt_adapters, get_adapter_state, set_adapter_state
from .config import TTAdapterConfig
from .models import load_model, set_mean_pooling

FORMAT = "fedtt-flwr/adapter/v1"


def save_adapter(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``get_adapter_state(model)`` plus the adapter config and base-model description to ``path``
    (atomically: a temporary file renamed into place). ``extra`` lands in the metadata as JSON."""
    if getattr(model, "fedtt_state_names", None) is None:
        raise ValueError("this model has no adapters (add_tt_adapters / methods.add_lora): nothing to save")
    config = getattr(model, "fedtt_config", None)
    source = getattr(model, "fedtt_source", {})
    meta = {
        "format": FORMAT,
        "adapter_config": config.model_dump_json() if config is not None else "null",
        "source": json.dumps(source),
        "extra": json.dumps(extra),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in get_adapter_state(model).items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_adapter(path: str | os.PathLike) -> tuple[dict, TTAdapterConfig | None, dict[str, Any]]:
    """``(state, config, source)`` from an adapter file; a file of another kind is a clear error."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a fedtt-flwr adapter file (format={meta.get('format')!r})")
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    raw = meta["adapter_config"]
    config = None if raw == "null" else TTAdapterConfig.model_validate_json(raw)
    return state, config, json.loads(meta["source"])


def load_adapted_model(
    path: str | os.PathLike, base_model: str | None = None, device: str | None = None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Re-create the fine-tuned model: load the base model, add adapters with the saved config, and load
    the saved tensors. ``base_model`` overrides the name stored in the file (e.g. a local copy)."""
    state, config, source = read_adapter(path)
    if config is None:
        raise ValueError(f"{path} holds LoRA-family tensors (no TT adapter config): rebuild the model with "
                         "fedtt_flwr.methods.build_model and load them with set_adapter_state")
    name = base_model or source.get("model")
    if not name:
        raise ValueError(f"{path} does not name its base model: pass base_model=")
    model, tokenizer = load_model(
        name, source.get("task_kind", "classification"), num_labels=source.get("num_labels", 2)
    )
    if source.get("pooling") == "mean":  # the head was trained on mean-pooled token states
        set_mean_pooling(model)
    if source.get("prompt_task"):  # a decoder scoring prompt answers (fedtt_flwr.prompts)
        from .prompts import CandidateScorer, ChoiceScorer, choice_ids, get_prompt

        lm = model
        if source.get("num_choices"):  # multiple choice: each example's own candidates
            model = ChoiceScorer(lm, source["num_choices"])
        else:
            model = CandidateScorer(lm, choice_ids(tokenizer, get_prompt(source["prompt_task"])))
        model.fedtt_source = {**lm.fedtt_source, "prompt_task": source["prompt_task"]}
    add_tt_adapters(model, config)
    set_adapter_state(model, state)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def load_run(folder: str | os.PathLike, device: str | None = None):
    """A finished run's model, rebuilt from its folder: the run config in ``config.json`` (every method: TT, LoRA,
    ...), the trained tensors from ``adapter.safetensors``. Returns ``(model, tokenizer, cfg)``."""
    from .config import RunConfig, current_keys
    from .methods.build import build_model

    folder = Path(folder)
    config_file, adapter_file = folder / "config.json", folder / "adapter.safetensors"
    for path in (config_file, adapter_file):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a finished run folder: no {path.name}")
    saved = current_keys(json.loads(config_file.read_text())["run_config"])
    known = {RunConfig.model_fields[k].alias or k for k in RunConfig.model_fields}
    dropped = sorted(set(saved) - known)
    if dropped:  # a key this version no longer has: it cannot change the model this version builds
        print(f"[fedtt] {folder}: run-config keys this version does not know, ignored: {', '.join(dropped)}")
    cfg = RunConfig.from_flower({k: v for k, v in saved.items() if k in known})
    from .methods.registry import get_method

    if get_method(cfg.method).personal:
        raise ValueError(f"{folder} is a {cfg.method} run: part of its model (each node's own tensors) stayed on the "
                         "nodes and is not in adapter.safetensors, so the server's file alone is not a model")
    model, tokenizer = build_model(cfg)
    state, _, _ = read_adapter(adapter_file)
    set_adapter_state(model, {n: t.numpy() for n, t in state.items()})
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer, cfg
