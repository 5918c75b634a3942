"""Local DP: per-sample gradients of TT layers, clipping, noise, accounting, the budget stop, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModule
from torch import nn

from fedtt_flwr.config import RunConfig
from fedtt_flwr.privacy import (
    DPSettings,
    PrivacyBudgetExceeded,
    check_budget,
    dp_train_steps,
    noise_for_target,
    settings_for,
    spent_epsilon,
)
from fedtt_flwr.tt import TTLinear


@pytest.mark.parametrize("mode", ["rebuild", "contract"])
def test_per_sample_gradients_of_a_tt_layer_match_per_example_autograd(mode):
    torch.manual_seed(0)
    model = nn.Sequential(TTLinear(48, 24, rank=3, forward_mode=mode), nn.GELU(), nn.Linear(24, 3))
    x, y = torch.randn(6, 48), torch.tensor([0, 1, 2, 0, 1, 2])
    gsm = GradSampleModule(model, force_functorch=True, loss_reduction="sum")
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    per_sample = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    gsm.to_standard_module()
    assert any(n.startswith("0.core_") for n in per_sample)
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        for n, p in model.named_parameters():
            assert torch.allclose(per_sample[n][i], p.grad, atol=1e-5, rtol=1e-4), n


class _Toy(nn.Module):
    """A TT layer and a head behind the `model(**batch).loss` interface the training loop uses."""

    def __init__(self) -> None:
        super().__init__()
        self.tt, self.head = TTLinear(16, 8, rank=2), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        logits = self.head(torch.tanh(self.tt(x)))
        return type("Out", (), {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits})()


def _toy_run(sigma: float, clip: float, seed: int = 0, steps: int = 1, lr: float = 1.0):
    torch.manual_seed(0)
    model = _Toy()
    data = [{"x": torch.randn(16) * 10, "labels": torch.tensor(i % 2)} for i in range(64)]
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = dp_train_steps(model, loader, torch.optim.SGD(model.parameters(), lr=lr), steps, torch.device("cpu"),
                           DPSettings(sigma, clip, 1e-5, 0.0), seed)
    delta = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
    return model, delta, stats


def test_clipping_bounds_each_examples_contribution():
    """SGD at lr 1 without noise: the step is the sum of clipped per-example gradients over the expected
    batch size, so its norm is at most C * (examples drawn) / 16, whatever the (large) raw gradients."""
    clip = 1e-3
    _, delta, stats = _toy_run(sigma=0.0, clip=clip)
    assert stats["num_examples"] > 0
    assert delta.norm() <= clip * stats["num_examples"] / 16 + 1e-7
    assert delta.norm() > 0


def test_noise_appears_with_sigma_and_not_without():
    _, a, _ = _toy_run(sigma=0.0, clip=1.0, seed=3)
    _, b, _ = _toy_run(sigma=0.0, clip=1.0, seed=3)
    _, c, _ = _toy_run(sigma=1.0, clip=1.0, seed=3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_model_comes_back_without_opacus_hooks():
    model, _, _ = _toy_run(sigma=0.5, clip=1.0, steps=2)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not model._forward_hooks and not model.tt._forward_hooks


def test_epsilon_equals_opacus_accountant():
    history = [(1.1, 0.02, 30), (1.1, 0.02, 30), (0.8, 0.05, 10)]
    ref = RDPAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            ref.step(noise_multiplier=sigma, sample_rate=q)
    assert spent_epsilon(history, 1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert spent_epsilon([], 1e-5) == 0.0
    sigma = noise_for_target(3.0, 1e-5, 0.02, 200)  # the planned noise spends (about) the target
    assert 2.9 < spent_epsilon([(sigma, 0.02, 200)], 1e-5) <= 3.0 + 1e-6


def test_settings_plan_noise_for_every_round():
    cfg = RunConfig(dp="epsilon", dp_epsilon=3.0, num_server_rounds=4, local_steps=5, batch_size=16)
    settings, q = settings_for(cfg, num_examples=160)
    assert q == pytest.approx(0.1)
    assert spent_epsilon([(settings.noise_multiplier, q, 20)], cfg.dp_delta) == pytest.approx(3.0, abs=0.05)
    assert settings_for(RunConfig(), 160) is None
    fixed, _ = settings_for(RunConfig(dp="sigma", dp_noise_multiplier=0.7), 160)
    assert fixed.noise_multiplier == 0.7


def test_budget_check():
    step = (1.0, 0.1, 10)
    budget = spent_epsilon([step] * 3, 1e-5)
    dp = DPSettings(1.0, 1.0, 1e-5, budget=budget)
    assert check_budget([step] * 2, step, dp, "client 0") == pytest.approx(budget)  # exactly at the budget: fine
    with pytest.raises(PrivacyBudgetExceeded, match="client 0: privacy budget spent.*dp-epsilon"):
        check_budget([step] * 3, step, dp, "client 0")
    assert check_budget([step] * 3, step, DPSettings(1.0, 1.0, 1e-5, budget=0.0), "c") > budget  # no budget set


@pytest.mark.parametrize(("key", "value", "words"), [
    ("dp-noise-multiplier", -0.1, "dp-noise-multiplier"), ("dp-max-grad-norm", 0.0, "dp-max-grad-norm"),
    ("dp-delta", 1.0, "dp-delta"), ("dp-epsilon", 0.0, "dp-epsilon.*target epsilon > 0"),
    ("dp-epsilon", -1.0, "dp-epsilon"), ("dp", "on", "'dp'"),
])
def test_bad_dp_settings_are_clear_errors(key, value, words):
    with pytest.raises(ValueError, match=words):
        RunConfig.from_flower({"dp": "epsilon", "dp-epsilon": 1.0, key: value})


@pytest.mark.parametrize("method", ["fedtt", "fedtt+"])
def test_federated_dp_run_reports_epsilon_and_stops_at_the_budget(tmp_path, tiny_model_dir, tiny_sst2_dir, method):
    from fedtt_flwr.inprocess import run_inprocess

    # 2 IID clients of 120 examples, batch 16: q = 1/8; one round of 3 steps at sigma 1 spends e1
    e1, e2, e3 = (spent_epsilon([(1.0, 1 / 8, 3)] * k, 1e-5) for k in (1, 2, 3))
    cfg = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 3, "local-steps": 3,
           "max-length": 16, "output-dir": str(tmp_path), "run-name": "r", "method": method, "partition": "iid",
           "dp": "sigma", "dp-noise-multiplier": 1.0, "dp-epsilon": (e2 + e3) / 2}
    run_inprocess(cfg, num_nodes=2)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["dp_epsilon_max"] == pytest.approx(e1) and lines[1]["dp_epsilon_mean"] == pytest.approx(e1)
    assert lines[2]["dp_epsilon_max"] == pytest.approx(e2)
    assert lines[3]["replies"] == 0 and lines[3]["errors"] == 2  # the third round would pass the budget
    assert "dp_epsilon_max" not in lines[3]


def test_dp_on_a_decoder_trains_only_the_adapters(tiny_llama_dir, tiny_sst2_dir):
    from fedtt_flwr.data import load_split
    from fedtt_flwr.methods import build_model
    from fedtt_flwr.train import make_loader, tokenize

    model, tok = build_model(RunConfig(model=str(tiny_llama_dir), task="sst2"))
    data = tokenize(load_split("sst2", "dev", tiny_sst2_dir), tok, 32, "sst2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    dp_train_steps(model, make_loader(data, tok, 8, True, prompt_task="sst2"), torch.optim.AdamW(params), 2,
                   torch.device("cpu"), DPSettings(1.0, 1.0, 1e-5, 0.0), seed=0)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(model.fedtt_state_names)
