"""Local differential privacy: DP-SGD on a client's trainable tensors with Opacus, and its accounting.

Each client clips every example's gradient (of the travelling tensors only: TT cores, adapter biases,
head) to ``max_grad_norm`` and adds Gaussian noise of std ``noise_multiplier * max_grad_norm``; batches
are Poisson-sampled at rate ``q = batch_size / n_client``, the sampling the RDP accountant assumes. A
client's accountant history lives in its Flower ``Context.state`` and grows by the steps it takes in
every round it is sampled; no trusted server is needed.

Opacus is imported only when DP is used: importing it pulls in torch.distributed, and two app modules
importing that concurrently in one Flower simulation process failed with a circular import (seen in 2 of 4 runs
of the `flwr run` smoke test).

Noise from a target: ``noise_multiplier`` is derived for ``num_server_rounds * local_steps`` steps, i.e.
as if the client were sampled in **every** round. A client sampled less often spends less than the
target; the accountant reports what it actually spent, and a client refuses a round that would take it
past its budget.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import RunConfig
from .train import pieces


class PrivacyBudgetExceeded(RuntimeError):
    """A round would take the client past its epsilon budget: it does not train."""


@dataclass(frozen=True)
class DPSettings:
    """What a client needs for one round of DP-SGD (from :func:`settings_for`)."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    budget: float  # epsilon; 0: none
    physical_batch: int = 0  # the most examples one forward/backward takes; 0: a whole Poisson batch


def noise_for_target(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that spends exactly (``epsilon``, ``delta``) in ``steps`` Poisson-sampled steps."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant="rdp"))


def spent_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of an RDP accountant with this history of (noise multiplier, sample rate, steps)."""
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is sound, only loose
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(accountant.get_epsilon(delta))


def check_budget(history: list[tuple[float, float, int]], step: tuple[float, float, int], dp: DPSettings,
                 who: str) -> float:
    """Epsilon after the planned round; :class:`PrivacyBudgetExceeded` if that passes the budget."""
    after = spent_epsilon([*history, step], dp.delta)
    if dp.budget and after > dp.budget * (1 + 1e-6):
        raise PrivacyBudgetExceeded(
            f"{who}: privacy budget spent: epsilon is {spent_epsilon(history, dp.delta):.3f} and this round "
            f"({step[2]} steps, sigma {step[0]:.3f}, q {step[1]:.4f}) would take it to {after:.3f} > "
            f"dp-epsilon {dp.budget:g} (delta {dp.delta:g}); it does not train any more")
    return after


def dp_train_steps(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, steps: int,
                   device: torch.device, dp: DPSettings, seed: int) -> dict[str, float]:
    """``steps`` DP-SGD steps on Poisson-sampled batches of ``loader``'s dataset. Per-example gradients of
    the trainable tensors come from Opacus (functorch for custom layers such as the TT layers), are
    clipped to ``dp.max_grad_norm``, summed, noised and averaged over the expected batch size, then
    ``optimizer`` (e.g. AdamW) steps. A Poisson batch larger than ``dp.physical_batch`` runs as several
    forward/backward passes whose clipped gradients add up before the one noisy step (Opacus' skip-step
    accumulation, as its BatchMemoryManager does): large expected batches in flat memory, the same update.
    The model comes back unwrapped, with no Opacus hooks."""
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    generator = torch.Generator().manual_seed(seed)
    # Opacus' DPDataLoader sampling (each example in with probability 1 / batches per epoch), with an empty draw
    # handed over as None: its own stand-in for one is built from the first example and fails on dict examples
    sampler = UniformWithReplacementSampler(num_samples=len(loader.dataset), sample_rate=1 / len(loader),
                                            generator=generator)
    poisson = DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=_none_if_empty(loader.collate_fn))
    gsm = GradSampleModule(model, force_functorch=True, loss_reduction="mean", strict=False)
    expected = max(1, len(loader.dataset) // len(loader))  # n * q, floored exactly (q = 1 / batches per epoch)
    dp_opt = DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                         expected_batch_size=expected, loss_reduction="mean", generator=generator)
    model.train()
    losses, seen = [], 0
    batches = _endless(poisson)
    try:
        for step in range(1, steps + 1):
            batch = next(batches)
            if batch is None:  # an empty Poisson draw: skipped; the accountant still counts the step (over-counts)
                continue
            size = _batch_size(batch)
            chunks = pieces(batch, dp.physical_batch or size)
            dp_opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i, chunk in enumerate(chunks):
                dp_opt.signal_skip_step(do_skip=i < len(chunks) - 1)  # clip and add up; noise and step at the end
                loss = _dp_loss(gsm, {k: v.to(device) for k, v in chunk.items()})
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at DP step {step}")
                with warnings.catch_warnings():  # Opacus' hooks on a frozen backbone: inputs need no gradient
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                _check_one_row_per_example(model, _batch_size(chunk))
                dp_opt.step()
                if i < len(chunks) - 1:
                    dp_opt.zero_grad(set_to_none=True)  # after a skipped step: per-example grads only
                step_loss += loss.item() * _batch_size(chunk) / size
            losses.append(step_loss)
            seen += size
    finally:
        dp_opt.zero_grad(set_to_none=True)
        for p in dp_opt.params:  # accumulated clipped gradients of a step an error cut short
            p.summed_grad = None
        gsm.to_standard_module()
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "num_examples": seen}


def _check_one_row_per_example(model: nn.Module, size: int) -> None:
    """Opacus clips one per-sample gradient per row of a layer's input: a model that runs more rows than examples
    (a prompt-scored decoder's second pass over multi-token answers, one row per candidate) would clip per row, and
    an example could weigh several times C. Refuse it rather than report an epsilon that does not hold."""
    for name, p in model.named_parameters():
        rows = getattr(p, "grad_sample", None)
        if rows is not None and rows.shape[0] != size:
            raise ValueError(
                f"dp: {name} got per-sample gradients for {rows.shape[0]} rows from a batch of {size} examples (a "
                "prompt with multi-token answers or several candidates per example runs one row per candidate), so "
                "per-example clipping would not bound an example's gradient; train this task without dp, or with "
                "one-token answers")


def _batch_size(batch: dict) -> int:
    return int(batch["labels"].shape[0])


def _dp_loss(gsm: nn.Module, batch: dict) -> torch.Tensor:
    """The batch's loss as the mean of per-example losses, which DP-SGD's mean reduction assumes. A model's own
    token-level loss (a causal LM's: the mean over every answer token of the batch) would weigh an example by its
    share of the batch's tokens, so one example's gradient would depend on the others'; it is recomputed per
    example."""
    labels = batch["labels"]
    if labels.dim() < 2:
        return gsm(**batch).loss
    logits = gsm(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return per_example_token_loss(logits, labels).mean()


def per_example_token_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Each row's mean next-token cross-entropy over its labelled positions (``labels`` aligned with the input, as
    Hugging Face's causal LMs take them): shape ``(batch,)``; a row with no labelled token gives 0."""
    targets = labels[:, 1:]
    token = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                        ignore_index=ignore_index, reduction="none").view_as(targets)
    mask = targets != ignore_index
    return (token * mask).sum(1) / mask.sum(1).clamp(min=1)


def _none_if_empty(collate):
    def wrapped(features: list):
        return collate(features) if features else None

    return wrapped


def _endless(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def check_task(cfg: RunConfig) -> None:
    """DP-SGD clips one gradient per example: a multiple-choice batch holds a row per candidate (and an encoder
    flattens them into its batch), so Opacus would clip per candidate and an example could weigh k times C."""
    from .tasks import task_of

    if cfg.dp != "off" and task_of(cfg).kind == "multiple-choice":
        raise ValueError(f"dp = {cfg.dp!r} with a multiple-choice task ({cfg.task}) is not supported: its batches hold "
                         "one row per candidate, so per-example clipping would bound each candidate, not each "
                         "example; train it without dp")


def settings_for(cfg: RunConfig, num_examples: int) -> tuple[DPSettings, float] | None:
    """``(settings, sample rate)`` of this client's DP-SGD, or None when ``dp = "off"``. With
    ``dp = "epsilon"`` the noise is planned for ``num-server-rounds * local-steps`` steps, as if the client
    were sampled in every round (the worst case)."""
    if cfg.dp == "off":
        return None
    check_task(cfg)
    q = 1.0 / math.ceil(max(num_examples, 1) / cfg.batch_size)  # what Opacus' Poisson loader samples at
    if cfg.dp == "epsilon":
        sigma = noise_for_target(cfg.dp_epsilon, cfg.dp_delta, q, cfg.num_server_rounds * cfg.local_steps)
    else:
        sigma = cfg.dp_noise_multiplier
    return DPSettings(sigma, cfg.dp_max_grad_norm, cfg.dp_delta, cfg.dp_epsilon, cfg.physical_batch), q

