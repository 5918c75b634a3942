"""Per-step learning, centrally: how far each adapter variant gets in 100, 250 and 500 steps on SST-2.

The federated budget of docs/convergence.md without the federation: MiniLM, batches of 16 from the whole
shuffled training set, max length 64, AdamW with 6 % linear warm-up then linear decay over 500 steps,
clipping 1.0, dev accuracy (all 872 sentences) after 100, 250 and 500 steps. A variant that learns less
per step here cannot catch up in a federated run, so this is the cheap filter for levers (about 4 minutes
per variant on one CPU thread). Results: one line per variant in benchmarks/results/per_step.jsonl (a
rerun skips the variants done); ``--report`` writes the table into docs/convergence-log.md.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.per_step --only tt-default,lora
    .venv/bin/python -m benchmarks.per_step --report
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from transformers import get_linear_schedule_with_warmup

import fedtt_flwr.tt as tt_module
from benchmarks._common import RESULTS, publish
from fedtt_flwr.adapters import add_tt_adapters, norm_param_names
from fedtt_flwr.config import TTAdapterConfig
from fedtt_flwr.data import default_data_dir, load_split
from fedtt_flwr.methods import add_lora
from fedtt_flwr.models import load_model, set_mean_pooling
from fedtt_flwr.train import cycle, evaluate, make_loader, tokenize, train_steps

OUT = RESULTS / "per_step.jsonl"
DOC = RESULTS.parents[1] / "docs" / "convergence-log.md"  # the per-step table lives in the study's log
CHECKPOINTS = (100, 250, 500)
NEAR_ID = {"init": "near-identity"}
#: name -> (what it changes, settings). ``lr``/``head_lr``/``method``/``depth``/``norms``/``pooling`` are the
#: probe's own (``pooling``: the [CLS] pooler unless "mean");
#: everything else goes to TTAdapterConfig. ``depth``: 2 or 3 cores per projection instead of 5.
VARIANTS: dict[str, tuple[str, dict]] = {
    "lora": ("LoRA r=8 on query/value (reference)", {"method": "lora"}),
    "lora-ln-weight": ("LoRA r=8 + LayerNorm gains", {"method": "lora", "norms": "weight"}),
    "tt-default": ("TT adapters, defaults (LoRETTA init, lr 3e-3)", {}),
    "tt-scale4": ("adapter scaling 4", {"scaling": 4.0}),
    "tt-scale4-ni": ("adapter scaling 4, near-identity init", {"scaling": 4.0, **NEAR_ID}),
    "tt-headlr10": ("head lr 10x (3e-2)", {"head_lr": 0.03}),
    "tt-identity-act": ("no ReLU in the bottleneck", {"activation": "identity"}),
    "tt-rank8-ni-lr1e-2": ("rank 8, near-identity, lr 1e-2", {"rank": 8, "lr": 0.01, **NEAR_ID}),
    "tt-3cores": ("3 cores per projection (24x16x64)", {"depth": 3}),
    "tt-2cores": ("2 cores per projection: a plain rank-5 factorisation", {"depth": 2}),
    "tt-ln": ("+ LayerNorm gains and biases", {"norms": True}),
    "tt-ln-bias": ("+ LayerNorm biases only", {"norms": "bias"}),
    "tt-ln-weight": ("+ LayerNorm gains only", {"norms": "weight"}),
    "tt-ln-weight-ni-lr1e-2": ("+ LayerNorm gains, near-identity, lr 1e-2", {"norms": "weight", "lr": 0.01,
                                                                              **NEAR_ID}),
    "lora-mean": ("LoRA r=8, head on mean-pooled tokens", {"method": "lora", "pooling": "mean"}),
    "tt-ln-weight-mean": ("+ LayerNorm gains, head on mean-pooled tokens", {"norms": "weight", "pooling": "mean"}),
}
_DEPTH_FACTORS = {3: {384: [24, 16], 64: [64]}, 2: {384: [384], 64: [64]}}


def build(settings: dict) -> tuple[torch.nn.Module, object]:
    s = dict(settings)
    method, norms, depth = s.pop("method", "fedtt"), s.pop("norms", False), s.pop("depth", None)
    s.pop("lr", None), s.pop("head_lr", None)
    layernorm = False if norms == "bias" else norms  # biases only: set by hand below
    model, tokenizer = load_model("minilm", "classification", num_labels=2)
    if s.pop("pooling", "cls") == "mean":
        set_mean_pooling(model)
    if method == "lora":
        return add_lora(model, 8, 16.0, train_layernorm=layernorm), tokenizer
    shape_rule = tt_module.tt_shape
    if depth:  # MiniLM only (hidden 384, bottleneck 64)
        tt_module.tt_shape = lambda i, o: tuple(_DEPTH_FACTORS[depth][i] + _DEPTH_FACTORS[depth][o])
    try:
        add_tt_adapters(model, TTAdapterConfig(train_layernorm=layernorm, **s))
    finally:
        tt_module.tt_shape = shape_rule
    if norms == "bias":  # biases only: not a config option (it measured no gain), so done by hand here
        for name in norm_param_names(model, True):
            model.get_parameter(name).requires_grad_(name.endswith(".bias"))
    return model, tokenizer


def probe(name: str, settings: dict, data_dir: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model, tokenizer = build(settings)
    train = load_split("sst2", "train", data_dir).shuffle(seed=seed)
    dev = load_split("sst2", "dev", data_dir)
    train_loader = make_loader(tokenize(train, tokenizer, 64), tokenizer, 16, True, seed)
    dev_loader = make_loader(tokenize(dev, tokenizer, 64), tokenizer, 128, False)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lr = settings.get("lr", 3e-3)
    groups = [{"params": [p for n, p in named if "classifier" not in n], "lr": lr},
              {"params": [p for n, p in named if "classifier" in n], "lr": settings.get("head_lr", lr)}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    steps = CHECKPOINTS[-1]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    batches, done, curve, t0 = cycle(train_loader), 0, {}, time.perf_counter()
    for checkpoint in CHECKPOINTS:
        train_steps(model, batches, optimizer, checkpoint - done, torch.device("cpu"), scheduler=scheduler)
        done = checkpoint
        curve[str(checkpoint)] = round(100 * evaluate(model, dev_loader, "sst2", torch.device("cpu"))["accuracy"], 1)
        print(f"{name}: step {checkpoint} dev accuracy {curve[str(checkpoint)]} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return {"name": name, "curve": curve, "trainable": sum(p.numel() for _, p in named), "seed": seed}


def load() -> dict[str, dict]:
    if not OUT.exists():
        return {}
    return {r["name"]: r for r in map(json.loads, OUT.read_text().splitlines())}


def report() -> None:
    done = load()
    lines = ["| variant | trainable values | dev acc. after 100 / 250 / 500 steps |", "|---|---|---|"]
    for name, (what, _) in VARIANTS.items():
        if name in done:
            c = done[name]["curve"]
            lines.append(f"| {what} (`{name}`) | {done[name]['trainable']:,} | "
                         f"{' / '.join(str(c[str(k)]) for k in CHECKPOINTS)} |")
    publish(DOC, {"per-step": "\n".join(lines)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--data-dir", default=None, help="folder laid out like shared/data (default: found)")
    ap.add_argument("--report", action="store_true", help="write the table into docs/convergence.md")
    args = ap.parse_args()
    if args.report:
        return report()
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    data_dir = args.data_dir or str(default_data_dir() or "")
    if not data_dir:
        raise SystemExit("no data folder: pass --data-dir /path/to/shared/data or set FEDTT_DATA_DIR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    done = load()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in done:
            print(f"skip {name}: done", flush=True)
            continue
        result = probe(name, VARIANTS[name][1], data_dir)
        with OUT.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
