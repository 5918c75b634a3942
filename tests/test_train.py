"""Local training loop and evaluation on a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from datasets import Dataset

from fedtt_flwr import TTAdapterConfig, add_tt_adapters, get_adapter_state
from fedtt_flwr.train import cycle, evaluate, make_loader, train_steps


class _Tok:
    """A stand-in tokenizer for padding only (the tiny model has no vocabulary files)."""

    pad_token_id = 0
    padding_side = "right"
    model_input_names = ["input_ids", "attention_mask"]

    def pad(self, features, return_tensors="pt", **_):
        width = max(len(f["input_ids"]) for f in features)
        ids = [list(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor([int(f["label"]) for f in features])}


def _toy_dataset(n=64):
    g = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "label": []}
    for i in range(n):
        label = i % 2
        length = int(torch.randint(4, 9, (1,), generator=g))
        token = 5 if label else 6  # the label is readable from the tokens
        rows["input_ids"].append([2] + [token] * length)
        rows["label"].append(label)
    return Dataset.from_dict(rows)


def test_training_learns_a_separable_toy_task_through_adapters_only():
    torch.manual_seed(0)
    model = add_tt_adapters(tiny_model("bert"), TTAdapterConfig(rank=3, bottleneck=8))
    backbone = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    ds = _toy_dataset()
    loader = make_loader(ds, _Tok(), batch_size=16, shuffle=True, seed=0)
    before = evaluate(model, make_loader(ds, _Tok(), 64, False), "sst2", torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    stats = train_steps(model, cycle(loader), opt, steps=60, device=torch.device("cpu"))
    after = evaluate(model, make_loader(ds, _Tok(), 64, False), "sst2", torch.device("cpu"))
    assert stats["num_examples"] == 60 * 16
    assert after["loss"] < before["loss"] * 0.5 and after["accuracy"] == 1.0
    assert all(torch.equal(p, backbone[n]) for n, p in model.named_parameters() if n in backbone)
    assert get_adapter_state(model)


def test_nonfinite_loss_stops_with_a_clear_error():
    model = add_tt_adapters(tiny_model("bert"))
    for layer in model.modules():
        if hasattr(layer, "core_0"):
            torch.nn.init.constant_(layer.core_0, float("nan"))
    loader = make_loader(_toy_dataset(8), _Tok(), 4, False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    try:
        train_steps(model, cycle(loader), opt, 1, torch.device("cpu"))
    except FloatingPointError as exc:
        assert "lower the learning rate" in str(exc)
    else:
        raise AssertionError("a NaN loss must stop training")


def test_make_optimizer_builds_adamw_or_sgd_with_momentum():
    import torch

    from fedtt_flwr.train import make_optimizer

    p = [torch.nn.Parameter(torch.ones(3))]
    adam = make_optimizer(p, "adamw", 1e-3, weight_decay=0.1)
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["weight_decay"] == 0.1
    sgd = make_optimizer(p, "sgd", 0.5, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    p[0].grad = torch.ones(3)
    sgd.step()
    assert torch.allclose(p[0].detach(), torch.full((3,), 0.5))  # first step: lr * grad
    with pytest.raises(ValueError, match="adamw or sgd"):
        make_optimizer(p, "lion", 1e-3)
