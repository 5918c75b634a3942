"""Local training loop and evaluation on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model
from datasets import Dataset
from transformers.modeling_outputs import SequenceClassifierOutput

from fedtt_flwr import TTAdapterConfig, add_tt_adapters, get_adapter_state
from fedtt_flwr.train import batch_loss, cycle, evaluate, label_prior_shift, make_loader, pieces, train_steps


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


class _PriorOnly(torch.nn.Module):
    """A classifier that cannot read its input: its logits are one learnable bias vector, so training can
    only fit the label prior it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.bias.expand(input_ids.shape[0], 2)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _skewed_batches(n_pos: int, n_neg: int):
    labels = torch.tensor([1] * n_pos + [0] * n_neg)
    batch = {"input_ids": torch.zeros((len(labels), 3), dtype=torch.long), "labels": labels}
    return [batch] * 400, labels.tolist()


def test_label_prior_shift_is_tau_log_smoothed_local_frequencies():
    assert label_prior_shift([0, 1, 1], 2, 0.0) is None
    shift = label_prior_shift([1, 1, 1], 3, 0.5)  # classes 0 and 2 unseen: add-one smoothing keeps them finite
    np.testing.assert_allclose(shift.numpy(), 0.5 * np.log(np.array([1, 4, 1]) / 6), rtol=1e-6)


def test_logit_adjustment_fits_the_balanced_posterior_on_a_skewed_client():
    """Without the shift a prior-only model learns the client's log-odds (log 9 for a 90/10 client); with
    tau = 1 it stays near 0 (balanced, up to the smoothing), which keeps skewed clients from dragging the head
    apart."""
    biases = {}
    for tau in (0.0, 1.0):
        model = _PriorOnly()
        batches, labels = _skewed_batches(90, 10)
        shift = label_prior_shift(labels, 2, tau)
        train_steps(model, iter(batches), torch.optim.SGD(model.parameters(), lr=1.0), 400, torch.device("cpu"),
                    max_grad_norm=None, logit_shift=shift)
        biases[tau] = float(model.bias[1] - model.bias[0])
    assert biases[0.0] == pytest.approx(np.log(9), abs=0.05)
    # the shift is log(91/11) (add-one smoothing), so all that is left is log 9 - log(91/11) = 0.084
    assert biases[1.0] == pytest.approx(np.log(9) - np.log(91 / 11), abs=0.01)


def test_batch_loss_adds_the_shift_to_the_logits():
    model = _PriorOnly()
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.3, -0.2]))
    batch = {"input_ids": torch.zeros((4, 2), dtype=torch.long), "labels": torch.tensor([0, 1, 1, 1])}
    shift = torch.tensor([0.5, -1.0])
    expected = torch.nn.functional.cross_entropy(torch.tensor([[0.8, -1.2]] * 4), batch["labels"])
    assert float(batch_loss(model, batch, shift)) == pytest.approx(float(expected), rel=1e-6)
    assert float(batch_loss(model, batch)) != pytest.approx(float(expected), rel=1e-3)


def test_logit_adjust_is_refused_with_dp():
    from fedtt_flwr.config import RunConfig

    assert RunConfig.from_flower({"logit-adjust": 1.0}).logit_adjust == 1.0
    with pytest.raises(ValueError, match="logit-adjust uses the client's label frequencies"):
        RunConfig.from_flower({"logit-adjust": 1.0, "dp": "sigma"})
    with pytest.raises(ValueError, match="'logit-adjust'"):
        RunConfig.from_flower({"logit-adjust": -1.0})


def test_round_lr_follows_the_schedule():
    from fedtt_flwr.config import RunConfig

    cfg = RunConfig.from_flower({"lr": 0.01, "lr-schedule": "cosine", "lr-final": 0.1, "num-server-rounds": 5})
    lrs = [cfg.round_lr(r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)
    assert lrs[2] == pytest.approx(0.0055)  # half way: the mean of the two ends
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert RunConfig.from_flower({"lr": 0.01, "lr-schedule": "constant", "num-server-rounds": 5}).round_lr(5) == 0.01
    with pytest.raises(ValueError, match="'lr-final'"):
        RunConfig.from_flower({"lr-final": 1.5})


def test_tokenized_shares_are_cached_by_content(tmp_path, tiny_model_dir):
    """A cold process reads a share it tokenized before; different rows, tokenizer settings or a damaged entry are
    never served stale."""
    from transformers import AutoTokenizer

    from fedtt_flwr.train import tokenize, tokenize_cached

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = Dataset.from_dict({"text_a": ["a good film", "bad", "fine enough"], "text_b": ["", "", ""],
                              "label": [1, 0, 1], "group": ["x", "y", "x"]})
    share = rows.select([0, 2])  # a partition: indices over the whole table
    cache = tmp_path / "tok"
    first = tokenize_cached(share, tokenizer, 16, cache=cache)
    assert first.to_dict() == tokenize(share, tokenizer, 16).to_dict()
    (entry,) = cache.iterdir()
    again = tokenize_cached(share, tokenizer, 16, cache=cache)
    assert again.to_dict() == first.to_dict() and list(cache.iterdir()) == [entry]  # read, not written again
    stamp = (entry / "dataset_info.json").stat().st_mtime_ns
    tokenize_cached(share, tokenizer, 16, cache=cache)
    assert (entry / "dataset_info.json").stat().st_mtime_ns == stamp
    short = tokenize_cached(share, tokenizer, 3, cache=cache)  # another max-length: another entry
    assert all(len(x) <= 3 for x in short["input_ids"]) and len(list(cache.iterdir())) == 2
    other = tokenize_cached(rows.select([0, 1]), tokenizer, 16, cache=cache)  # other rows: another entry
    assert other["label"] == [1, 0] and len(list(cache.iterdir())) == 3
    for f in entry.glob("*.arrow"):  # a damaged entry is tokenized again, not trusted
        f.write_bytes(b"garbage")
    assert tokenize_cached(share, tokenizer, 16, cache=cache).to_dict() == first.to_dict()


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _update(model, batches, physical, steps=3, **kw):
    """The trained tensors' change after ``steps`` SGD steps over ``batches`` with pieces of ``physical``."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten().clone() for p in params])
    stats = train_steps(model, iter(batches), torch.optim.SGD(params, lr=0.5, momentum=0.9), steps,
                        torch.device("cpu"), physical_batch=physical, **kw)
    return torch.cat([p.detach().flatten() for p in params]) - before, stats


@pytest.mark.parametrize("extra", [{}, {"proximal_mu": 0.5, "logit_shift": torch.tensor([0.3, -0.3])}])
def test_pieces_of_a_large_batch_give_the_whole_batchs_update(extra):
    """Sentences of lengths 2-9 in batches of 13: pieces of 4, sorted by length and cut to their longest row, give
    the same update (FedProx's term counted once per step, the logit shift on every piece) and the same loss."""
    ds = _toy_dataset(39)
    batches = list(make_loader(ds, _Tok(), batch_size=13, shuffle=False))
    runs = []
    for physical in (0, 4):
        torch.manual_seed(0)
        model = _no_dropout(add_tt_adapters(tiny_model("bert"), TTAdapterConfig(rank=3, bottleneck=8)))
        widths: list[int] = []
        model.register_forward_pre_hook(lambda m, a, kw, w=widths: w.append(kw["input_ids"].shape[1]), with_kwargs=True)
        runs.append((*_update(model, batches, physical, **extra), widths))
    (whole, s0, w0), (pieces, s1, w1) = runs
    assert len(w1) == 4 * len(w0) and min(w1) < min(w0)
    assert whole.abs().max() > 0 and s0["num_examples"] == s1["num_examples"] == 39
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-6)
    assert s1["train_loss"] == pytest.approx(s0["train_loss"], rel=1e-5)


def test_pieces_of_a_causal_lm_batch_weigh_its_loss_by_answer_tokens():
    """A causal LM's loss is a mean over the batch's answer tokens: pieces weigh theirs by their share of those
    tokens (a piece whose rows have no answer token adds nothing), so the update equals the whole batch's."""
    g = torch.Generator().manual_seed(1)
    lengths, answers = [3, 12, 7, 5, 10, 4], [0, 6, 3, 1, 5, 2]  # row 0 has no answer token
    ids = torch.randint(3, 60, (6, 12), generator=g)
    mask = torch.tensor([[1] * n + [0] * (12 - n) for n in lengths])
    labels = torch.where(mask.bool(), ids, torch.tensor(-100))
    for row, (n, a) in enumerate(zip(lengths, answers, strict=True)):
        labels[row, :n - a] = -100
    batch = {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}
    runs = []
    for physical in (0, 2):
        model = _no_dropout(tiny_model("llama"))
        model.train()
        for n, p in model.named_parameters():
            p.requires_grad_("layers.1." in n)
        runs.append(_update(model, [batch] * 2, physical, steps=2)[0])
    assert runs[0].abs().max() > 0
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-6)


def test_pieces_keep_a_decoders_candidate_rows_with_their_example():
    """A decoder scoring k candidate answers runs k rows per example (labels: one per example): pieces hold whole
    examples, and the update equals the whole batch's."""
    from fedtt_flwr.prompts import ChoicePromptCollator, ChoiceScorer

    collate = ChoicePromptCollator(type("Tok", (), {"pad_token_id": 0})())
    g = torch.Generator().manual_seed(0)
    feats = [{"input_ids": torch.randint(3, 50, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist(),
              "choice_ids": [[7, 8], [9]], "label": i % 2} for i in range(7)]
    batch = collate(feats)
    parts = pieces(batch, 3)
    assert [int(p["labels"].shape[0]) for p in parts] == [3, 3, 1]
    assert all(p["input_ids"].shape[0] == 2 * p["labels"].shape[0] for p in parts)
    runs = []
    for physical in (0, 3):
        torch.manual_seed(0)
        model = ChoiceScorer(_no_dropout(tiny_model("llama")), 2)
        for n, p in model.named_parameters():
            p.requires_grad_("layers.1." in n)
        runs.append(_update(model, [batch] * 2, physical, steps=2)[0])
    assert runs[0].abs().max() > 0
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-6)
