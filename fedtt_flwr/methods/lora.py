"""LoRA baselines through peft: FedIT (``lora``), FFA-LoRA (A frozen) and RoLoRA (A and B take turns).

| method | trains and travels |
|---|---|
| ``lora`` (FedIT) | LoRA A and B on query/value, and the head |
| ``ffa-lora`` | LoRA B and the head; A stays frozen at its seeded random init and never travels |
| ``rolora`` | LoRA A (odd rounds) or B (even rounds), and the head (the strategy alternates) |
| ``fedex-lora`` | LoRA A and B, and the head; down also a dense residual per adapted matrix (exact aggregation) |
| ``flora`` | as fedex-lora; the residual takes the stacked products, LoRA restarts every round |
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import head_param_names, norm_param_names
from .registry import Method

PEFT_PREFIX = "base_model.model."


_LORA_FALLBACK_TARGETS = {"distilbert": ["q_lin", "v_lin"], "mpnet": ["q", "v"]}  # peft's table lacks these


def lora_targets(model: nn.Module) -> list[str]:
    """peft's default LoRA targets for this architecture (query and value projections)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    model_type = model.config.model_type
    targets = mapping.get(model_type) or _LORA_FALLBACK_TARGETS.get(model_type)
    if not targets:
        raise ValueError(f"no default LoRA targets known for model_type {model_type!r}")
    return list(targets)


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, freeze_a: bool = False,
             train_head: bool = True, train_layernorm: bool | str = False, local_b: bool = False,
             dropout: float = 0.0) -> nn.Module:
    """Wrap ``model`` with peft LoRA on its query/value projections (peft's default targets), freeze the
    backbone, and record the travelling tensors (A unless ``freeze_a``, B unless ``local_b``, the head, the norms
    chosen by ``train_layernorm`` as for TT adapters) like :func:`add_tt_adapters` does, so
    :func:`get_adapter_state` works the same. ``local_b``: B trains but stays on the node
    (``model.fedtt_local_names``)."""
    from peft import LoraConfig, get_peft_model

    head = set(head_param_names(model)) if train_head else set()
    head |= norm_param_names(model, train_layernorm)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=lora_targets(model), lora_dropout=dropout,
                        bias="none")
    wrapped = get_peft_model(model, config)
    travelling, local = [], []
    for name, p in wrapped.named_parameters():
        is_a, is_b = ".lora_A." in name, ".lora_B." in name
        trains = (is_b or (is_a and not freeze_a)) or name.removeprefix(PEFT_PREFIX) in head
        p.requires_grad_(trains)
        if trains:
            (local if is_b and local_b else travelling).append(name)
    wrapped.fedtt_config = None
    wrapped.fedtt_state_names = tuple(travelling)
    wrapped.fedtt_local_names = tuple(local)
    return wrapped


def _add_residual(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    if module.disable_adapters:  # peft's switch (adapters_off): the residual is adapter state too
        return output
    return output + nn.functional.linear(inputs[0].float(), module.lora_residual).to(output.dtype)


def add_residuals(wrapped: nn.Module) -> nn.Module:
    """A frozen dense ``lora_residual`` (zeros, the base weight's shape) beside every LoRA-adapted linear layer,
    added to its output: the aggregation residual of FedEx-LoRA and FLoRA (:mod:`strategies.residual`). It
    travels down (the server sets it), never trains, and is appended to the travelling tensors."""
    from peft.tuners.lora import LoraLayer

    names = []
    for name, module in wrapped.named_modules():
        base = getattr(module, "base_layer", None)
        if isinstance(module, LoraLayer) and isinstance(base, nn.Linear):
            # float32 whatever the backbone's dtype, like the LoRA factors: it accumulates every round's step
            zeros = torch.zeros(base.weight.shape, dtype=torch.float32, device=base.weight.device)
            module.lora_residual = nn.Parameter(zeros, requires_grad=False)
            module.register_forward_hook(_add_residual)
            names.append(f"{name}.lora_residual")
    if not names:
        raise ValueError("no LoRA-adapted linear layer to give a residual")
    wrapped.fedtt_state_names = (*wrapped.fedtt_state_names, *names)
    return wrapped


def inject(freeze_a: bool = False, local_b: bool = False, residual: bool = False):
    def add(model, cfg, resolved):
        wrapped = add_lora(model, cfg.lora_rank, cfg.lora_alpha, freeze_a=freeze_a,
                           train_layernorm=resolved.train_layernorm, local_b=local_b, dropout=cfg.lora_dropout)
        return add_residuals(wrapped) if residual else wrapped
    return add


METHODS = (
    Method("lora", "lora", "FedIT: LoRA A and B (peft) on query/value, and the head",
           inject(), lambda s, _: {**s.lora_a, **s.lora_b, **s.head}),
    Method("ffa-lora", "lora", "FFA-LoRA: LoRA B and the head; A frozen at its seeded init, never sent",
           inject(freeze_a=True), lambda s, _: {**s.lora_b, **s.head}),
    Method("rolora", "lora", "RoLoRA: LoRA A in odd rounds, B in even rounds, and the head",
           inject(), lambda s, r: {**(s.lora_a if r % 2 else s.lora_b), **s.head},
           rounds="alternate", groups=(r"\.lora_A\.", r"\.lora_B\.")),
    Method("fedex-lora", "lora", "FedEx-LoRA: LoRA A, B and the head averaged; the aggregation error goes into a "
           "dense residual beside each adapted matrix (sent down), so the global model is the clients' exact mean",
           inject(residual=True), lambda s, _: {**s.lora_a, **s.lora_b, **s.head}, rounds="residual",
           extra={"residual": "fedex"}),
    Method("flora", "lora", "FLoRA: the clients' LoRA products stacked (summed) into a dense residual (sent down); "
           "a fresh LoRA every round", inject(residual=True), lambda s, _: {**s.lora_a, **s.lora_b, **s.head},
           rounds="residual", extra={"residual": "flora"}),
)
