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


def _toy_run(sigma: float, clip: float, seed: int = 0, steps: int = 1, lr: float = 1.0, physical: int = 0,
             model: nn.Module | None = None):
    torch.manual_seed(0)
    model = model or _Toy()
    data = [{"x": torch.randn(16) * 10, "labels": torch.tensor(i % 2)} for i in range(64)]
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = dp_train_steps(model, loader, torch.optim.SGD(model.parameters(), lr=lr), steps, torch.device("cpu"),
                           DPSettings(sigma, clip, 1e-5, 0.0, physical), seed)
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


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_physical_batches_give_the_same_update_as_whole_poisson_batches(sigma):
    """Pieces of at most 3 examples: clipped gradients add up over the pieces and one noisy step follows, so the
    update equals the one of whole batches (same Poisson draws, same noise), with clipping active (C small)."""
    _, whole, a = _toy_run(sigma=sigma, clip=0.05, seed=1, steps=3, lr=0.1)
    _, pieces, b = _toy_run(sigma=sigma, clip=0.05, seed=1, steps=3, lr=0.1, physical=3)
    assert a["num_examples"] == b["num_examples"] > 9
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_pieces_in_order_of_length_without_their_unused_padding_give_the_whole_batchs_update(tiny_model_dir, sigma):
    """A TT-adapted BERT on sentences of very different lengths, padded to 24 tokens: pieces of 3 sorted by length
    and cut to their longest row give the same DP update as whole Poisson batches, and the model sees narrower
    inputs than the padded width (the CPU time a piece costs follows its own sentences)."""
    from fedtt_flwr.methods import build_model

    def once(physical: int) -> tuple[torch.Tensor, list[int]]:
        torch.manual_seed(0)
        model, tok = build_model(RunConfig(model=str(tiny_model_dir), task="sst2", method="fedtt"))
        for m in model.modules():  # the same network in every pass
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        widths: list[int] = []
        model.register_forward_pre_hook(lambda mod, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
        texts = ["good", "a dull boring plot and a weak actor in a long film", "not good at all", "fine",
                 "the story was fine but the ending dragged on far too long for me"] * 6
        data = [{**{k: v[0] for k, v in tok(t, padding="max_length", max_length=24, return_tensors="pt").items()},
                 "labels": torch.tensor(i % 2)} for i, t in enumerate(texts)]
        params = [p for p in model.parameters() if p.requires_grad]
        before = torch.cat([p.detach().flatten().clone() for p in params])
        dp_train_steps(model, torch.utils.data.DataLoader(data, batch_size=10), torch.optim.SGD(params, lr=0.5), 3,
                       torch.device("cpu"), DPSettings(sigma, 0.05, 1e-5, 0.0, physical), seed=2)
        return torch.cat([p.detach().flatten() for p in params]) - before, widths

    whole, wide = once(0)
    pieces, narrow = once(3)
    assert set(wide) == {24} and min(narrow) < 8 and max(narrow) < 24
    assert whole.abs().max() > 0
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-6)


def test_memory_stays_flat_the_model_never_sees_more_than_a_physical_batch():
    """The expected batch is 16 (Poisson draws of ~10-25); every forward pass takes at most 4 examples."""
    sizes: list[int] = []
    model = _Toy()
    model.register_forward_pre_hook(lambda mod, args, kwargs: sizes.append(kwargs["x"].shape[0]), with_kwargs=True)
    _, _, stats = _toy_run(sigma=1.0, clip=1.0, steps=4, physical=4, model=model)
    assert max(sizes) <= 4 and sum(sizes) == stats["num_examples"] > 16


def test_a_token_level_loss_is_a_mean_of_per_example_means_under_dp():
    """A causal LM's own loss averages over the batch's tokens, so an example's weight depends on the others'
    lengths; under DP each example's loss is its own mean (checked by hand), whatever else is in the batch."""
    from fedtt_flwr.privacy import per_example_token_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 1, 2, 6]])
    got = per_example_token_loss(logits, labels)
    logp = logits.log_softmax(-1)
    row0 = -(logp[0, 0, 3] + logp[0, 1, 4]) / 2  # position t predicts label t + 1
    row1 = -(logp[1, 1, 1] + logp[1, 2, 2] + logp[1, 3, 6]) / 3
    torch.testing.assert_close(got, torch.stack([row0, row1]))
    other = per_example_token_loss(torch.cat([logits[:1], torch.randn(1, 5, 7)]),
                                   torch.tensor([[-100, 3, 4, -100, -100], [-100, 1, 2, 3, 4]]))
    assert other[0] == got[0]


def test_lora_per_sample_gradients_under_dp_match_per_example_autograd(tiny_model_dir):
    """peft's LoRA layers through Opacus (functorch, as dp_train_steps wraps them), with a non-zero B so that A's
    gradients are not all zero; then two DP steps without noise move every trained tensor (opacus issue 820: a
    model wrapped before its parameters settled kept training stale copies)."""
    from fedtt_flwr.methods import build_model

    model, tok = build_model(RunConfig(model=str(tiny_model_dir), task="sst2", method="lora"))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trained) and any("lora_B" in n for n in trained)
    batch = tok(["a great movie", "a dull boring plot and a weak actor", "not good", "the story was fine"],
                padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0, 0, 1])
    model.train()
    for m in model.modules():  # dropout off: per-example and batched passes must see the same network
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    gsm = GradSampleModule(model, force_functorch=True, loss_reduction="sum", strict=False)
    nn.functional.cross_entropy(gsm(**batch).logits, labels, reduction="sum").backward()
    per_sample = {n: p.grad_sample.clone() for n, p in model.named_parameters() if p.requires_grad}
    gsm.to_standard_module()
    for i in range(len(labels)):
        model.zero_grad(set_to_none=True)
        one = {k: v[i:i + 1] for k, v in batch.items()}
        nn.functional.cross_entropy(model(**one).logits, labels[i:i + 1], reduction="sum").backward()
        for n in trained:
            p = dict(model.named_parameters())[n]
            torch.testing.assert_close(per_sample[n][i], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    data = [{**{k: v[0] for k, v in tok(t, padding="max_length", max_length=12, return_tensors="pt").items()},
             "labels": torch.tensor(i % 2)} for i, t in enumerate(["a great movie", "a dull plot"] * 16)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    dp_train_steps(model, torch.utils.data.DataLoader(data, batch_size=8), torch.optim.SGD(params, lr=0.1), 2,
                   torch.device("cpu"), DPSettings(0.0, 1.0, 1e-5, 0.0, physical_batch=3), seed=0)
    stale = [n for n in trained if torch.equal(dict(model.named_parameters())[n], before[n])]
    assert not stale


def test_dp_refuses_multiple_choice_tasks():
    from fedtt_flwr.preflight import check_privacy

    with pytest.raises(ValueError, match="multiple-choice task.*per-example clipping"):
        settings_for(RunConfig(task="copa", dp="sigma"), 100)
    with pytest.raises(ValueError, match="multiple-choice"):
        check_privacy(RunConfig(task="copa", dp="sigma"))
    check_privacy(RunConfig(task="copa"))  # without dp: fine


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


@pytest.mark.parametrize(("method", "physical"), [("fedtt", 0), ("fedtt+", 5)])
def test_federated_dp_run_reports_epsilon_and_stops_at_the_budget(tmp_path, tiny_model_dir, tiny_sst2_dir, method,
                                                                  physical, caplog):
    """The reported epsilon is the accountant's, whether Poisson batches run whole or in physical pieces; the
    small expected batch (16) gets the warning that DP-SGD needs large ones."""
    from fedtt_flwr.inprocess import run_inprocess

    # 2 IID clients of 120 examples, batch 16: q = 1/8; one round of 3 steps at sigma 1 spends e1
    e1, e2, e3 = (spent_epsilon([(1.0, 1 / 8, 3)] * k, 1e-5) for k in (1, 2, 3))
    cfg = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 3, "local-steps": 3,
           "max-length": 16, "output-dir": str(tmp_path), "run-name": "r", "method": method, "partition": "iid",
           "dp": "sigma", "dp-noise-multiplier": 1.0, "dp-epsilon": (e2 + e3) / 2, "physical-batch": physical}
    with caplog.at_level("WARNING"):
        run_inprocess(cfg, num_nodes=2)
    assert "dp with batch-size 16" in caplog.text and "batch-size 512, physical-batch 64" in caplog.text
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


def test_auto_optimizer_and_lr_pick_sgd_under_dp_and_adamw_otherwise():
    plain, private = RunConfig(), RunConfig(dp="epsilon", dp_epsilon=8.0)
    assert (plain.local_optimizer, plain.base_lr) == ("adamw", 3e-3)
    assert (private.local_optimizer, private.base_lr) == ("sgd", 0.5)
    assert private.round_lr(1) == 0.5
    mine = RunConfig(dp="sigma", optimizer="adamw", lr=1e-3)  # what a user sets wins
    assert (mine.local_optimizer, mine.base_lr) == ("adamw", 1e-3)
    assert RunConfig(dp="sigma", optimizer="adamw").base_lr == 3e-3
    with pytest.raises(ValueError, match="set lr for optimizer = 'sgd' without dp"):
        RunConfig.from_flower({"optimizer": "sgd"})
    assert RunConfig.from_flower({"optimizer": "sgd", "lr": 0.05}).base_lr == 0.05
    with pytest.raises(ValueError, match="'lr'"):
        RunConfig.from_flower({"lr": "fast"})


def test_an_empty_first_poisson_draw_is_skipped_not_a_crash():
    """Expected batch 1 of 64 examples: a draw is empty with probability ~0.37, and Opacus hands an empty first
    draw over as a list, not a dict; over ten seeds some round starts with one."""
    for seed in range(10):
        torch.manual_seed(0)
        model = _Toy()
        data = [{"x": torch.randn(16), "labels": torch.tensor(i % 2)} for i in range(64)]
        loader = torch.utils.data.DataLoader(data, batch_size=1)
        stats = dp_train_steps(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), 3, torch.device("cpu"),
                               DPSettings(1.0, 1.0, 1e-5, 0.0), seed)
        assert stats["num_examples"] >= 0


class _TwoRowsPerExample(_Toy):
    """Runs each example through the TT layer twice (as a prompt scorer runs one row per candidate answer)."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        h = self.tt(torch.cat([x, -x]))
        logits = self.head(torch.tanh(h[: len(x)] + h[len(x):]))
        return type("Out", (), {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits})()


def test_dp_refuses_a_model_that_runs_more_rows_than_examples():
    with pytest.raises(ValueError, match="per-sample gradients for .* rows from a batch of"):
        _toy_run(sigma=1.0, clip=1.0, model=_TwoRowsPerExample())
