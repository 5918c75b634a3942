"""Tensorized adapters: the module, the injection into Hugging Face models, and the state that travels.

Placement (docs/tensorized-adapters.md):
- encoders: an output adapter after the attention output projection and one after the feed-forward
  output projection of every block, ``out = y + Adapter(y)`` (before dropout, residual and LayerNorm);
- decoders: pre-adapters on the inputs of ``mlp.gate_proj`` and ``mlp.up_proj`` (``x' = x + Adapter(x)``)
  and an output adapter after ``mlp.down_proj``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from .config import TTAdapterConfig
from .tt import TTLinear

Position = Literal["input", "output"]

#: (regex on the module's full name, where the adapter goes), one list per family.
ENCODER_RULES: tuple[tuple[str, Position], ...] = (
    (r"(^|\.)layer\.\d+\.attention\.(output\.dense|attn\.o)$", "output"),  # BERT, RoBERTa, ELECTRA, DeBERTa; MPNet
    (r"(^|\.)layer\.\d+\.output\.dense$", "output"),
    (r"(^|\.)layer\.\d+\.attention\.out_lin$", "output"),  # DistilBERT
    (r"(^|\.)layer\.\d+\.ffn\.lin2$", "output"),
)
DECODER_RULES: tuple[tuple[str, Position], ...] = (
    (r"(^|\.)mlp\.gate_proj$", "input"),  # LLaMA, Mistral, Qwen2, SmolLM, ...
    (r"(^|\.)mlp\.up_proj$", "input"),
    (r"(^|\.)mlp\.down_proj$", "output"),
)
#: Rules that place one family's adapters together: a model that matches some rules of a group must match all
#: of them equally often (one per block), else it would be half-adapted without a word (an architecture whose
#: FFN output is `output.dense` but whose attention output has a name no rule knows).
RULE_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3))  # indices into ENCODER_RULES
DECODER_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2),)
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


class TTAdapter(nn.Module):
    """``Adapter(z) = TT_up(act(TT_down(z))) * scaling``.

    With ``config.dense`` (the Houlsby baseline) ``down`` and ``up`` are plain ``nn.Linear`` layers,
    initialised near identity (weights ~ N(0, 1e-2^2), biases 0) as in Houlsby et al. (2019)."""

    def __init__(self, hidden: int, config: TTAdapterConfig, device: torch.device | None = None) -> None:
        super().__init__()
        b = config.bottleneck
        if config.dense:
            self.down = nn.Linear(hidden, b, bias=config.bias, device=device)
            self.up = nn.Linear(b, hidden, bias=config.bias, device=device)
            for layer in (self.down, self.up):
                nn.init.normal_(layer.weight, std=1e-2)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        else:
            common = {"rank": config.rank, "bias": config.bias, "forward_mode": config.forward_mode,
                      "device": device}
            self.down = TTLinear(hidden, b, shape=config.shape_for(hidden, b), **common)
            self.up = TTLinear(b, hidden, shape=config.shape_for(b, hidden), **common)
            if config.init == "near-identity":
                self.up.reset_parameters(std=config.init_up_std)
        self.act = _ACTIVATIONS[config.activation]()
        self.scaling = config.scaling

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.up(self.act(self.down(z)))
        # a multiply by 1.0 is a full pass over the (tokens x hidden) output, forward and backward: ~15% of an
        # adapter's time on CPU (benchmarks/step_time.py --profile)
        return out if self.scaling == 1.0 else out * self.scaling


class AdaptedLinear(nn.Module):
    """A frozen linear layer with a TT adapter on its input or its output."""

    def __init__(self, base_layer: nn.Linear, adapter: TTAdapter, position: Position) -> None:
        super().__init__()
        self.base_layer, self.adapter, self.position = base_layer, adapter, position

    @property
    def weight(self) -> torch.Tensor:  # some model code reads `.weight` of the layers it owns
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.position == "input":
            return self.base_layer(x + self.adapter(x))
        y = self.base_layer(x)
        return y + self.adapter(y)


def norm_param_names(model: nn.Module, which: bool | str) -> set[str]:
    """Parameter names of every LayerNorm/RMSNorm: gains and biases (``True``), gains only (``"weight"``),
    none (``False``)."""
    if not which:
        return set()
    names = set()
    for mname, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
            names.update(f"{mname}.{pname}" if mname else pname for pname, _ in module.named_parameters(recurse=False)
                         if which is True or pname == "weight")
    return names


def _rules_for(model: nn.Module, placement: str) -> tuple[tuple[str, Position], ...]:
    if placement == "encoder":
        return ENCODER_RULES
    if placement == "decoder":
        return DECODER_RULES
    names = [n for n, _ in model.named_modules()]
    is_decoder = any(re.search(DECODER_RULES[0][0], n) for n in names)
    return DECODER_RULES if is_decoder else ENCODER_RULES


def _check_complete(model: nn.Module, rules: tuple[tuple[str, Position], ...],
                    targets: list[tuple[str, nn.Linear, Position]]) -> None:
    """Every placement rule of a family that matched at all matched once per block: a partial match is an
    error naming what is missing, not a model adapted in half of the places the method puts adapters."""
    counts = [sum(1 for name, _, _ in targets if re.search(pattern, name)) for pattern, _ in rules]
    for group in DECODER_GROUPS if rules is DECODER_RULES else RULE_GROUPS:
        found = [counts[i] for i in group]
        if any(found) and len(set(found)) > 1:
            most = max(found)
            missing = [f"'{rules[i][0]}' ({counts[i]} of {most})" for i in group if counts[i] < most]
            raise ValueError(
                f"add_tt_adapters: {type(model).__name__} matches only part of the adapter placement: too few "
                f"modules match {', '.join(missing)}, so some blocks' projections would get no adapter. This "
                "architecture names its layers differently; it is not supported yet.")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def head_param_names(model: nn.Module) -> list[str]:
    """Parameters of the task head: outside the base model (``base_model_prefix``), or newly
    initialised when the checkpoint was loaded, never the (frozen) LM output embeddings."""
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    has_base = isinstance(inner, nn.Module) and inner is not model
    new_params = set(getattr(model, "fedtt_new_params", ()))
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(p) for p in out_emb.parameters()} if out_emb is not None else set()
    return [
        n
        for n, p in model.named_parameters()
        if id(p) not in skip and ((has_base and not n.startswith(prefix + ".")) or n in new_params)
    ]


def _tensorize_classifier(model: nn.Module, config: TTAdapterConfig) -> None:
    dense = getattr(getattr(model, "classifier", None), "dense", None)
    if config.tensorized_classifier == "auto" and (config.dense or not isinstance(dense, nn.Linear)):
        return
    if not isinstance(dense, nn.Linear):
        raise ValueError(
            "tensorized_classifier=True needs a RoBERTa-style head with a `classifier.dense` nn.Linear; "
            f"{type(model).__name__} has none"
        )
    tt = TTLinear(dense.in_features, dense.out_features, rank=config.rank, bias=dense.bias is not None,
                  forward_mode=config.forward_mode, device=dense.weight.device)
    model.classifier.dense = tt


def add_tt_adapters(model: nn.Module, config: TTAdapterConfig | None = None) -> nn.Module:
    """Add TT adapters to a Hugging Face model in place, freeze the backbone, and return the model.

    Trainable afterwards: the adapters' cores and biases, the task head (``train_head``) and the
    LayerNorms (``train_layernorm``: gains and biases, or ``"weight"``: the gains only). Exactly these make
    up :func:`get_adapter_state`.
    """
    config = config or TTAdapterConfig()
    if getattr(model, "fedtt_config", None) is not None:
        raise ValueError("this model already has TT adapters; add them once, to a freshly loaded model")
    rules = _rules_for(model, config.placement)
    targets: list[tuple[str, nn.Linear, Position]] = []
    for name, module in model.named_modules():
        for pattern, position in rules:
            if re.search(pattern, name):
                if not isinstance(module, nn.Linear):
                    raise ValueError(f"module {name!r} matches the adapter placement but is a "
                                     f"{type(module).__name__}, not nn.Linear")
                targets.append((name, module, position))
                break
    if not targets:
        raise ValueError(
            f"add_tt_adapters: {type(model).__name__} has no module where a TT adapter goes "
            f"(placement={config.placement!r}). Looked for module names matching encoder patterns "
            f"{[p for p, _ in ENCODER_RULES]} or decoder patterns {[p for p, _ in DECODER_RULES]}."
        )
    _check_complete(model, rules, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    if config.tensorized_classifier:  # True or "auto"
        _tensorize_classifier(model, config)
    head = set(head_param_names(model)) if config.train_head else set()
    for name, base, position in targets:
        hidden = base.in_features if position == "input" else base.out_features
        adapter = TTAdapter(hidden, config, device=base.weight.device)
        _replace(model, name, AdaptedLinear(base, adapter, position))
    tt = tt_param_names(model) | {n for n, _ in model.named_parameters() if ".adapter." in f".{n}"}
    norms = norm_param_names(model, config.train_layernorm)
    travelling = []
    for name, p in model.named_parameters():
        if name in tt or name in head or name in norms:
            p.requires_grad_(True)
            travelling.append(name)
    model.fedtt_config = config
    model.fedtt_state_names = tuple(travelling)
    return model


def _state_names(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "fedtt_state_names", None)
    if names is None:
        raise ValueError("this model has no TT adapters: call add_tt_adapters(model, config) first")
    return names


def tt_layers(model: nn.Module) -> dict[str, TTLinear]:
    """Every TT layer of the model by module name (adapters and a tensorized classifier)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TTLinear)}


def tt_param_names(model: nn.Module) -> set[str]:
    """Full names of the TT layers' parameters (cores and biases)."""
    return {f"{m}.{p}" for m, layer in tt_layers(model).items() for p, _ in layer.named_parameters()}


def get_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly the tensors that travel (TT cores, adapter biases, head, LayerNorms when enabled), by
    their parameter names, detached copies on CPU in model order."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu", copy=True) for n in _state_names(model)}


def set_adapter_state(
    model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray], strict: bool = True
) -> None:
    """Load travelling tensors back by name. Unknown names and shape mismatches are always errors;
    missing names are errors unless ``strict=False`` (a partial update, e.g. FedTT+ cores)."""
    names = _state_names(model)
    params = dict(model.named_parameters())
    unknown = [n for n in state if n not in names]
    if unknown:
        raise KeyError(f"adapter state has {len(unknown)} unknown tensor name(s), e.g. {unknown[:3]}")
    missing = [n for n in names if n not in state]
    if strict and missing:
        raise KeyError(f"adapter state lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
    bad = [
        f"{n}: got {tuple(v.shape)}, expected {tuple(params[n].shape)}"
        for n, v in state.items()
        if tuple(v.shape) != tuple(params[n].shape)
    ]
    if bad:
        raise ValueError(f"adapter state has {len(bad)} shape mismatch(es): {'; '.join(bad[:3])}")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(torch.as_tensor(v))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: total, trainable, travelling, and the TT layers' cores and biases."""
    params = dict(model.named_parameters())
    layers = tt_layers(model).values()
    return {
        "total": sum(p.numel() for p in params.values()),
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "travelling": sum(params[n].numel() for n in _state_names(model)),
        "tt_cores": sum(c.numel() for layer in layers for c in layer.cores),
        "tt_biases": sum(layer.bias.numel() for layer in layers if layer.bias is not None),
    }


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """The backbone alone for the duration (every TT/dense adapter's output scaled by 0; peft's own
    switch for LoRA): a decoder's zero-shot baseline. The task head, if any, stays as it is."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():  # FedEx-LoRA's and FLoRA's residual hooks follow this switch too
            yield model
        return
    adapters = [m for m in model.modules() if isinstance(m, TTAdapter)]
    saved = [a.scaling for a in adapters]
    for a in adapters:
        a.scaling = 0.0
    try:
        yield model
    finally:
        for a, scale in zip(adapters, saved, strict=True):
            a.scaling = scale
