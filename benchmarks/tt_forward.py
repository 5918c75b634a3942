"""One adapted site, forward+backward: a TT adapter (rebuild-then-matmul and direct contraction) against peft's
LoRA r=8, per hidden size.

Each variant is a frozen ``h x h`` linear layer with its adapter, as in a model: the TT adapter (down h->64, ReLU,
up 64->h) on the layer's output (``AdaptedLinear``), LoRA through peft on the layer. N tokens in, a fixed random
gradient out (a ``.sum()`` loss would hand the backward an expanded gradient and time a copy no model makes);
variants interleaved. ``contract-fixed-factors``: the contraction with its chain products given (see FixedFactors).
Usage: .venv/bin/python -m benchmarks.tt_forward [--tokens 4096 --hidden 384,576,768 --rounds 8 --reps 5]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import interleaved_medians, machine, write_result
from fedtt_flwr import TTAdapterConfig, pick_device
from fedtt_flwr.adapters import AdaptedLinear, TTAdapter


def lora_site(h: int, device: torch.device) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential()
    base.add_module("dense", torch.nn.Linear(h, h, device=device))
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["dense"])).base_model.model.dense


class FixedFactors(torch.nn.Module):
    """The contraction forward with each TT layer's two chain products (input side, output side) held as leaf
    tensors instead of rebuilt from the cores every forward: the site's cost without the per-step chain (what
    batching or caching the chains could save at most)."""

    def __init__(self, site: AdaptedLinear) -> None:
        super().__init__()
        self.base = site.base_layer
        self.factors = torch.nn.ParameterList()
        for tt in (site.adapter.down, site.adapter.up):
            with torch.no_grad():
                left = tt._chain(tt.cores[:tt._split]).reshape(tt.in_features, -1)
                right = tt._chain(tt.cores[tt._split:]).reshape(-1, tt.out_features)
            self.factors.extend([torch.nn.Parameter(left), torch.nn.Parameter(right)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ld, rd, lu, ru = self.factors
        y = self.base(x)
        return y + (torch.relu((y @ ld) @ rd) @ lu) @ ru


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", default="384,576,768")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    out = {"args": vars(args), "machine": machine(), "by_hidden": {}}
    for h in map(int, args.hidden.split(",")):
        torch.manual_seed(0)
        x = torch.randn(args.tokens, h, device=device, requires_grad=True)  # inside a model the input needs grad
        grad = torch.randn(args.tokens, h, device=device)
        sites = {mode: AdaptedLinear(torch.nn.Linear(h, h, device=device).requires_grad_(False),
                                     TTAdapter(h, TTAdapterConfig(rank=5, forward_mode=mode), device=device), "output")
                 for mode in ("rebuild", "contract")}
        sites["contract-fixed-factors"] = FixedFactors(sites["contract"])
        sites["lora-r8"] = lora_site(h, device)

        def run(site: torch.nn.Module, x=x, grad=grad) -> None:
            site(x).backward(grad)
            if device.type == "cuda":
                torch.cuda.synchronize()

        t = interleaved_medians({k: (lambda site=site: run(site)) for k, site in sites.items()},
                                rounds=args.rounds, reps=args.reps)
        ratios = {"contract_over_rebuild": t["contract"]["median_s"] / t["rebuild"]["median_s"],
                  "contract_over_lora": t["contract"]["median_s"] / t["lora-r8"]["median_s"],
                  "fixed_factors_over_contract": t["contract-fixed-factors"]["median_s"] / t["contract"]["median_s"],
                  "fixed_factors_over_lora": t["contract-fixed-factors"]["median_s"] / t["lora-r8"]["median_s"]}
        out["by_hidden"][h] = {**t, **{k: round(v, 4) for k, v in ratios.items()}}
        print(f"h={h:5d}  " + "  ".join(f"{k} {v['median_s'] * 1e3:7.2f} ms" for k, v in t.items())
              + "  " + "  ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    print("wrote", write_result(f"tt_forward_{device.type}{'' if args.tokens == 4096 else f'_{args.tokens}'}", out))


if __name__ == "__main__":
    main()
