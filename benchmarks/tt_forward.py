"""TT adapter forward+backward: rebuild-then-matmul vs direct contraction, per hidden size.

Times one TTAdapter (down h->64, ReLU, up 64->h) on N tokens, both forward modes interleaved.
Usage: .venv/bin/python -m benchmarks.tt_forward [--tokens 4096 --rounds 8 --reps 5]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import interleaved_medians, machine, write_result
from fedtt_flwr import TTAdapterConfig, pick_device
from fedtt_flwr.adapters import TTAdapter


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
        x = torch.randn(args.tokens, h, device=device)
        fns = {}
        for mode in ("rebuild", "contract"):
            adapter = TTAdapter(h, TTAdapterConfig(rank=5, forward_mode=mode), device=device)

            def run(adapter=adapter, x=x):
                adapter(x).sum().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()

            fns[mode] = run
        t = interleaved_medians(fns, rounds=args.rounds, reps=args.reps)
        ratio = t["contract"]["median_s"] / t["rebuild"]["median_s"]
        out["by_hidden"][h] = {**t, "contract_over_rebuild": round(ratio, 4)}
        print(f"h={h:5d}  rebuild {t['rebuild']['median_s'] * 1e3:7.2f} ms  contract "
              f"{t['contract']['median_s'] * 1e3:7.2f} ms  contract/rebuild {ratio:.3f}")
    print("wrote", write_result(f"tt_forward_{device.type}", out))


if __name__ == "__main__":
    main()
