"""A client's training step: TT adapters vs LoRA r=8 vs the frozen backbone alone, same batch, one process.

Each variant is built exactly as the ClientApp builds it (`methods.build_model`): MiniLM as a classifier
on SST-2, SmolLM2-135M as a candidate scorer on SST-2's prompt template. One real batch of SST-2 (the
first ``--batch`` training sentences, padded to the longest, at most ``--seq`` tokens). The reference
``frozen`` is the same model with every adapter removed and the gradient forced back through the
whole network (the input embeddings' output requires grad): the backward work every method must do
at least. Variants are interleaved and reported as medians with ratios; ``--profile`` adds where the
TT step's time goes (torch.profiler, top operators by self CPU time; the adapters' own forward).
Variants beyond the default four: ``tt-fused`` is TT with torch's fused AdamW instead of the client's
per-parameter one (not the default: it changes results at float-rounding level, docs/performance.md).
``--random-tokens``: full ``--seq``-token batches of random tokens (classifiers only), the long-text case SST-2's
short sentences do not show.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.step_time [--model minilm|smollm2-135m]
        [--batch 32 --seq 128 --rounds 6 --reps 3] [--profile] [--random-tokens]
"""

from __future__ import annotations

import argparse
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from benchmarks._common import interleaved_medians, machine, write_result
from fedtt_flwr.adapters import AdaptedLinear, TTAdapter
from fedtt_flwr.config import RunConfig
from fedtt_flwr.data import default_data_dir, load_split
from fedtt_flwr.methods import build_model, prompt_task
from fedtt_flwr.models import pick_device
from fedtt_flwr.train import make_loader, make_optimizer, tokenize


def strip_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every adapted layer replaced by its frozen base layer."""
    for _, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, AdaptedLinear):
                setattr(module, child_name, child.base_layer)
    return model


def build(variant: str, model_name: str, device: torch.device):
    method = {"tt": "fedtt", "tt-rebuild": "fedtt", "tt-fused": "fedtt", "lora": "lora", "frozen": "fedtt"}[variant]
    cfg = RunConfig.from_flower({"model": model_name, "task": "sst2", "method": method})
    model, tokenizer = build_model(cfg)
    if variant == "tt-rebuild":  # "tt" is the default ("auto": contract where the shapes allow)
        for m in model.modules():
            if hasattr(m, "forward_mode"):
                m.forward_mode = "rebuild"
    if variant == "frozen":
        strip_adapters(model)
        for p in model.parameters():
            p.requires_grad_(False)
        owner = model.lm if hasattr(model, "lm") else model  # a decoder's CandidateScorer wraps the LM
        emb = owner.get_input_embeddings()
        emb.register_forward_hook(lambda mod, inp, out: out.requires_grad_(True))
        params = [p for n, p in model.named_parameters() if "classifier" in n]
        for p in params:
            p.requires_grad_(True)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    model.to(device).train()
    opt = make_optimizer(params, "adamw", 1e-3) if params else None  # as the client builds it
    if variant == "tt-fused":  # torch's fused AdamW: one call for all cores instead of ~30 ops per core
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, fused=True)
    return model, tokenizer, cfg, opt, sum(p.numel() for p in params)


def real_batch(tokenizer, cfg: RunConfig, size: int, seq: int, device: torch.device) -> dict:
    data = load_split("sst2", "train", default_data_dir()).select(range(size))
    loader = make_loader(tokenize(data, tokenizer, seq, prompt_task(cfg)), tokenizer, size, shuffle=False,
                         prompt_task=prompt_task(cfg))
    return {k: v.to(device) for k, v in next(iter(loader)).items()}


def random_batch(tokenizer, size: int, seq: int, device: torch.device) -> dict:
    """``size`` sequences of ``seq`` random tokens, none padded: the full-length batches a long-text task trains
    on (SST-2's sentences pad to ~34 tokens), with random binary labels."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(tokenizer), (size, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(2, (size,), generator=g).to(device)}


def profile_tt(model, opt, batch, steps: int = 5) -> dict:
    """Top operators of the TT step and the share of the step spent in the adapters' forward."""
    from torch.profiler import ProfilerActivity, profile, record_function

    original = TTAdapter.forward

    def traced(self, z):
        with record_function("tt_adapter_forward"):
            return original(self, z)

    TTAdapter.forward = traced
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function("step"):
                    loss = model(**batch).loss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    finally:
        TTAdapter.forward = original
    events = prof.key_averages()
    total = next(e.cpu_time_total for e in events if e.key == "step")
    adapter = sum(e.cpu_time_total for e in events if e.key == "tt_adapter_forward")
    top = sorted((e for e in events if e.key not in ("step", "tt_adapter_forward")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {"adapter_forward_share": round(adapter / total, 4),
            "top_ops_self_cpu_share": [(e.key, round(e.self_cpu_time_total / total, 4)) for e in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default="frozen,tt,lora,tt-rebuild")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--random-tokens", action="store_true",
                    help="full --seq-token batches of random tokens instead of SST-2 sentences (classifiers only)")
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    fns, trainable, models, batch = {}, {}, {}, None
    for variant in args.variants.split(","):
        model, tokenizer, cfg, opt, trainable[variant] = build(variant, args.model, device)
        if args.random_tokens and hasattr(model, "lm"):  # a decoder's CandidateScorer needs its prompt layout
            ap.error(f"--random-tokens builds a classifier batch; {args.model} trains as a decoder scorer")
        if batch is None:
            batch = (random_batch(tokenizer, args.batch, args.seq, device) if args.random_tokens
                     else real_batch(tokenizer, cfg, args.batch, args.seq, device))
        models[variant] = (model, opt)

        def step(model=model, opt=opt, batch=batch):
            loss = model(**batch).loss
            if opt is not None:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if opt is not None:
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        fns[variant] = step
    timings = interleaved_medians(fns, rounds=args.rounds, reps=args.reps)
    tokens = int(batch["attention_mask"].sum())
    result = {"args": vars(args), "machine": machine(), "batch_tokens": tokens, "batch_shape":
              list(batch["input_ids"].shape), "trainable_params": trainable, "timings": timings}
    med = {k: v["median_s"] for k, v in timings.items()}
    result["ratios"] = {f"{a}/{b}": round(med[a] / med[b], 4) for a, b in
                        (("tt", "lora"), ("tt", "frozen"), ("lora", "frozen"), ("tt-rebuild", "tt"), ("tt-fused", "tt"))
                        if a in med and b in med}
    if args.profile and "tt" in models:
        result["tt_profile"] = profile_tt(*models["tt"], batch=batch)
    for k, v in timings.items():
        print(f"{k:12s} median {v['median_s'] * 1000:8.1f} ms/step  trainable {trainable[k]:,}")
    for k, v in result["ratios"].items():
        print(f"{k}: {v}")
    if "tt_profile" in result:
        print(result["tt_profile"])
    name = f"step_time_{args.model}{'_random' if args.random_tokens else ''}_{device.type}"
    print("wrote", write_result(name, result))


if __name__ == "__main__":
    main()
