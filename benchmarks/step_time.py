"""Training-step time of MiniLM + TT adapters vs MiniLM + LoRA r=8 (peft) on query/value.

Same batch (32 x 128 tokens by default), same optimizer (AdamW), measured interleaved in one process;
reports medians and the TT/LoRA ratio. Usage:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/step_time.py [--rounds 6 --reps 3 --batch 32 --seq 128]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from _common import interleaved_medians, machine, write_result  # noqa: E402

from fedtt_flwr import TTAdapterConfig, add_tt_adapters, load_model, pick_device  # noqa: E402


def build(variant: str, device: torch.device):
    model, _ = load_model("minilm", "classification", num_labels=2)
    if variant.startswith("tt"):
        mode = "contract" if variant == "tt-contract" else "rebuild"  # "tt" = rebuild, as measured before
        add_tt_adapters(model, TTAdapterConfig(rank=5, forward_mode=mode))
    elif variant == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                 lora_dropout=0.0, task_type="SEQ_CLS"))
    else:
        raise ValueError(variant)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-3), sum(p.numel() for p in params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default="tt,lora,tt-contract")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch, args.seq), device=device),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (args.batch,), device=device),
    }
    fns, trainable = {}, {}
    for variant in args.variants.split(","):
        model, opt, trainable[variant] = build(variant, device)

        def step(model=model, opt=opt):
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        fns[variant] = step
    timings = interleaved_medians(fns, rounds=args.rounds, reps=args.reps)
    result = {"args": vars(args), "machine": machine(), "trainable_params": trainable, "timings": timings}
    if "tt" in timings and "lora" in timings:
        result["tt_over_lora"] = round(timings["tt"]["median_s"] / timings["lora"]["median_s"], 4)
    if "tt-contract" in timings and "tt" in timings:
        result["contract_over_rebuild"] = round(timings["tt-contract"]["median_s"] / timings["tt"]["median_s"], 4)
    for k, v in timings.items():
        print(f"{k:12s} median {v['median_s'] * 1000:8.1f} ms/step  trainable {trainable[k]:,}")
    for k in ("tt_over_lora", "contract_over_rebuild"):
        if k in result:
            print(f"{k}: {result[k]}")
    print("wrote", write_result(f"step_time_{device.type}", result))


if __name__ == "__main__":
    main()
