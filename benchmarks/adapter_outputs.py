"""Has a trained adapter file collapsed the representation? Per layer, how far apart the dev sentences are.

Loads an adapter file (a run folder's ``adapter.safetensors``), runs the first ``--n`` SST-2 dev sentences
through it and prints, per hidden layer, the mean distance of a sentence's token-mean vector from the
batch mean ("spread": 0 when every sentence maps to the same vector), and per TT adapter the norm of
what it adds against the norm of what it reads. docs/convergence.md uses it on the Dirichlet 0.1 runs.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.adapter_outputs benchmarks/out/convergence/RUN/adapter.safetensors
"""

from __future__ import annotations

import argparse
import json

import torch

from fedtt_flwr.checkpoint import load_adapted_model
from fedtt_flwr.data import default_data_dir, load_split
from fedtt_flwr.models import MaskedMeanPooler


def inspect(adapter_file: str, n: int, data_dir: str | None) -> dict:
    model, tokenizer = load_adapted_model(adapter_file)
    model.eval()
    dev = load_split("sst2", "dev", data_dir).select(range(n))
    enc = tokenizer(list(dev["text_a"]), truncation=True, max_length=64, padding=True, return_tensors="pt")
    norms: dict[str, tuple[float, float]] = {}

    def record(name: str):
        def hook(module, inputs, output):
            norms[name] = (inputs[0].norm(dim=-1).mean().item(), output.norm(dim=-1).mean().item())
        return hook

    for name, module in model.named_modules():
        if name.endswith(".adapter"):
            module.register_forward_hook(record(name.removeprefix("bert.encoder.")))
    mean = MaskedMeanPooler()
    mean.mask = enc["attention_mask"]
    with torch.no_grad():
        hidden = model.bert(**enc, output_hidden_states=True).hidden_states
    spread = []
    for h in hidden:
        v = mean(h)
        spread.append(round((v - v.mean(0)).norm(dim=-1).mean().item(), 4))
    return {"adapter_file": adapter_file, "sentences": n, "spread_per_layer": spread,
            "adapter_in_out_norm": {k: [round(a, 3), round(b, 3)] for k, (a, b) in norms.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter_file")
    ap.add_argument("--n", type=int, default=64, help="dev sentences")
    ap.add_argument("--data-dir", default=str(default_data_dir() or "") or None)
    args = ap.parse_args()
    print(json.dumps(inspect(args.adapter_file, args.n, args.data_dir), indent=1))


if __name__ == "__main__":
    main()
