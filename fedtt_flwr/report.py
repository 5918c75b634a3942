"""Parameter and communication report: TT adapters next to LoRA on query/value, before any training.

Bytes are counted the way Flower counts them (``ArrayRecord.count_bytes()``: serialized array bytes
plus key bytes), on zero arrays of the right shapes, so models built on the meta device work too.
"""

from __future__ import annotations

import re

import numpy as np
from torch import nn

from .adapters import add_tt_adapters, count_parameters, head_param_names, tt_layers, tt_param_names
from .config import TaskKind, TTAdapterConfig
from .methods.lora import lora_targets
from .methods.registry import ReportShapes, all_methods
from .models import build_empty_model


def serialized_bytes(shapes: dict[str, tuple[int, ...]], dtype: str = "float32", packed: bool = False,
                     wire: str = "float32", block: int = 128) -> int:
    """What Flower's ``ArrayRecord.count_bytes()`` gives for arrays of these names and shapes (each array's
    ``.npy`` bytes and its name); ``packed``: for the one flat array a packed reply carries (``pack-arrays``; in
    the ``wire`` precision, int8 with its scales) and its layout digest. Computed, not serialized: no Flower, no
    memory for the values."""
    from strategies.precision import WireFormat
    from strategies.wire import digest_bytes, npy_size

    if packed:
        size = sum(int(np.prod(s)) for s in shapes.values())
        arrays = WireFormat(wire, block).spec(size) if wire != "float32" else [("packed", (size,), dtype)]
        return sum(npy_size(shape, str(dt)) + len(name) for name, shape, dt in arrays) + digest_bytes()
    return sum(npy_size(s, dtype) + len(k) for k, s in shapes.items())


def lora_shapes(model: nn.Module, rank: int, targets: list[str]) -> dict[str, tuple[int, ...]]:
    """The LoRA A (r x in) and B (out x r) shapes peft would create on the target linears."""
    pattern = re.compile(r"(^|\.)(" + "|".join(map(re.escape, targets)) + r")$")
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and pattern.search(name):
            shapes[f"{name}.lora_A.weight"] = (rank, m.in_features)
            shapes[f"{name}.lora_B.weight"] = (m.out_features, rank)
    return shapes


def _numel(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


def method_bytes(model_name: str, task_kind: TaskKind, num_labels: int, cfg: TTAdapterConfig,
                 tt_state: dict, lora: dict, head: dict, rounds: int = 12, packed: bool = False,
                 dense_layernorm: bool | str | None = None, wire: str = "float32", block: int = 128) -> dict:
    """Per registered method: trainable values and uplink bytes per round for one client (mean over ``rounds``
    rounds where the method changes what it sends: FedTT+'s cyclic schedule, RoLoRA's A/B turns). ``head``: the
    model's own (dense) head, which the LoRA methods train and send. ``dense_layernorm``: the dense adapter's
    norms when they differ from the TT adapters' (a run's ``train-layernorm = auto`` gives baselines none).
    ``wire``/``block``: the packed records' precision (``wire-precision``, ``wire-block``)."""
    dense_cfg = {"dense": True} if dense_layernorm is None else {"dense": True, "train_layernorm": dense_layernorm}
    dense_model = add_tt_adapters(build_empty_model(model_name, task_kind, num_labels),
                                  cfg.model_copy(update=dense_cfg))
    dense = {n: tuple(p.shape) for n, p in dense_model.named_parameters() if n in set(dense_model.fedtt_state_names)}
    shapes = ReportShapes(tt=tt_state, dense=dense, lora_a={n: v for n, v in lora.items() if ".lora_A." in n},
                          lora_b={n: v for n, v in lora.items() if ".lora_B." in n}, head=head)
    out = {}
    for method in all_methods():
        sent = [method.uplink(shapes, r) for r in range(1, rounds + 1)]
        trained = method.uplink(shapes, 0) if method.rounds == "all" else {k: v for s in sent for k, v in s.items()}
        if method.local:  # trained too, but never sent (a personalised method's own tensors)
            every = {**shapes.tt, **shapes.dense, **shapes.lora_a, **shapes.lora_b, **shapes.head}
            trained = {**trained, **{n: s for n, s in every.items() if method.is_local(n)}}
        if method.rounds == "all":
            up = serialized_bytes(sent[0], packed=packed, wire=wire, block=block)
        else:
            up = round(float(np.mean([serialized_bytes(s, packed=packed, wire=wire, block=block) for s in sent])))
        out[method.name] = {"trainable_params": _numel(trained), "bytes_up_per_round": up}
    return out


def param_report(
    model_name: str,
    rank: int = 5,
    lora_rank: int = 8,
    task_kind: TaskKind = "classification",
    num_labels: int = 2,
    adapter_config: TTAdapterConfig | None = None,
    dense_layernorm: bool | str | None = None,
    wire: str = "float32",
    block: int = 128,
) -> dict:
    """Trainable parameters and bytes per round (one client, one direction) of TT adapters and LoRA; ``wire``,
    ``block``: the precision of packed records (``methods_packed``)."""
    cfg = adapter_config or TTAdapterConfig(rank=rank)
    model = build_empty_model(model_name, task_kind, num_labels)
    targets = lora_targets(model)
    lora = lora_shapes(model, lora_rank, targets)
    params = dict(model.named_parameters())
    lora_head = {n: tuple(params[n].shape) for n in head_param_names(model)}  # LoRA keeps the dense head
    add_tt_adapters(model, cfg)
    params = dict(model.named_parameters())
    tt_state = {n: tuple(params[n].shape) for n in model.fedtt_state_names}
    counts = count_parameters(model)
    layers = tt_layers(model)
    tt_names = tt_param_names(model)
    head = {n: s for n, s in tt_state.items() if n not in tt_names}
    lora_params, head_params, lora_head_params = _numel(lora), _numel(head), _numel(lora_head)
    tt_bytes = serialized_bytes(tt_state)
    lora_bytes = serialized_bytes({**lora, **lora_head})
    cfg_model = model.config
    return {
        "methods": method_bytes(model_name, task_kind, num_labels, cfg, tt_state, lora, lora_head,
                                dense_layernorm=dense_layernorm),
        "methods_packed": method_bytes(model_name, task_kind, num_labels, cfg, tt_state, lora, lora_head,
                                       packed=True, dense_layernorm=dense_layernorm, wire=wire, block=block),
        "wire_precision": wire if wire != "int8" else f"int8 (block {block})",
        "model": model_name,
        "model_type": cfg_model.model_type,
        "hidden_size": cfg_model.hidden_size,
        "num_layers": cfg_model.num_hidden_layers,
        "intermediate_size": getattr(cfg_model, "intermediate_size", 4 * cfg_model.hidden_size),
        "backbone_params": counts["total"] - counts["travelling"],
        "tt": {
            "rank": cfg.rank,
            "bottleneck": cfg.bottleneck,
            "tt_layers": len(layers),
            "shapes": sorted({str(list(layer.shape)) for layer in layers.values()}),
            "core_params": counts["tt_cores"],
            "bias_params": counts["tt_biases"],
            "head_params": head_params,
            "trainable_params": counts["travelling"],
            "bytes_per_round": tt_bytes,
        },
        "lora": {
            "rank": lora_rank,
            "targets": targets,
            "adapter_params": lora_params,
            "head_params": lora_head_params,
            "trainable_params": lora_params + lora_head_params,
            "bytes_per_round": lora_bytes,
        },
        "lora_over_tt_params": round((lora_params + lora_head_params) / counts["travelling"], 3),
        "lora_over_tt_bytes": round(lora_bytes / tt_bytes, 3),
        "note": "bytes_per_round: serialized fp32 arrays one client sends up in one round (FedTT: the same comes "
                "down); methods: uplink per client and round, averaged over 12 rounds for fedtt+ and rolora",
    }


_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def client_memory(report: dict, batch_size: int = 4, seq_len: int = 512, dtype: str = "bfloat16",
                  gradient_checkpointing: bool = False) -> dict:
    """What one client needs in accelerator memory to train TT adapters (GB, 1e9 bytes), from a
    :func:`param_report`. An estimate, not a measurement:

    - backbone: every frozen parameter in ``dtype``;
    - adapters: fp32 weights, gradients and AdamW's two moments (16 bytes per trainable parameter);
    - activations kept for the backward pass, in ``dtype``: per token and layer the inputs of the
      attention and MLP blocks, q/k/v and the attention output (~6 hidden), and the MLP's gate, up,
      activation and product (~4 intermediate); FlashAttention/SDPA keep no seq x seq matrix. With
      gradient checkpointing only each layer's input (1 hidden) is kept, plus one layer recomputed.
    """
    if dtype not in _BYTES:
        raise ValueError(f"dtype must be one of {sorted(_BYTES)}, got {dtype!r}")
    b, h, i, layers = _BYTES[dtype], report["hidden_size"], report["intermediate_size"], report["num_layers"]
    tokens = batch_size * seq_len
    per_layer = tokens * b * (6 * h + 4 * i)
    acts = tokens * b * h * layers + per_layer if gradient_checkpointing else per_layer * layers
    parts = {"backbone": report["backbone_params"] * b, "adapters": report["tt"]["trainable_params"] * 16,
             "activations": acts}
    return {**{k: round(v / 1e9, 3) for k, v in parts.items()}, "total": round(sum(parts.values()) / 1e9, 3),
            "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype,
            "gradient_checkpointing": gradient_checkpointing}
