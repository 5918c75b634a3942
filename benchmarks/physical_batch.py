"""Large local batches on a CPU: one pass over a whole batch against pieces (``physical-batch``), and pieces in
order of length cut to their own longest row against pieces in the batch's order at its full width; without DP
(train_steps) and with DP-SGD (dp_train_steps), MiniLM + FedTT on real SST-2 sentences, one process.

Each variant takes one optimizer step on the same batches (expected batch ``--batch``, pieces of ``--piece``);
interleaved medians and ratios (benchmarks/_common.py). The ``unsorted`` variants patch the piece maker to the
plain in-order split, which is what the pieces were before they were sorted.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.physical_batch [--batch 512 --piece 64 --rounds 3]
"""

from __future__ import annotations

import argparse
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from benchmarks._common import interleaved_medians, machine, write_result
from fedtt_flwr import privacy, train
from fedtt_flwr.config import RunConfig


def _in_order(batch: dict, size: int) -> list[dict]:
    n = int(batch["labels"].shape[0])
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--piece", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from fedtt_flwr.client import client_data, session
    from fedtt_flwr.data import default_data_dir
    from fedtt_flwr.methods import prompt_task

    cfg = RunConfig.from_flower({"model": "minilm", "task": "sst2", "method": "fedtt", "partition": "iid",
                                 "max-length": 64, "batch-size": args.batch, "data-dir": str(default_data_dir())})
    sess = session(cfg)
    data = client_data(cfg, 0, 3, "train")
    loader = train.make_loader(data, sess.tokenizer, args.batch, shuffle=True, seed=0, prompt_task=prompt_task(cfg))
    batch = next(iter(loader))
    params = [p for p in sess.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)  # timing only: the model stays as it is
    dp = privacy.DPSettings(1.0, 1.0, 1e-5, 0.0, args.piece)
    sorted_pieces = train.pieces

    def plain(physical: int, sort: bool):
        def step():
            train.pieces = sorted_pieces if sort else _in_order
            train.train_steps(sess.model, iter([batch]), opt, 1, sess.device, physical_batch=physical)
        return step

    def private(sort: bool):
        def step():
            privacy.pieces = sorted_pieces if sort else _in_order
            privacy.dp_train_steps(sess.model, loader, opt, 1, sess.device, dp, seed=0)
        return step

    fns = {"whole": plain(0, True), "pieces-unsorted": plain(args.piece, False), "pieces": plain(args.piece, True),
           "dp-unsorted": private(False), "dp": private(True)}
    res = interleaved_medians(fns, rounds=args.rounds, reps=1, warmup=1)
    train.pieces = privacy.pieces = sorted_pieces
    med = {k: v["median_s"] for k, v in res.items()}
    ratios = {"pieces/whole": med["pieces"] / med["whole"],
              "pieces/pieces-unsorted": med["pieces"] / med["pieces-unsorted"],
              "dp/dp-unsorted": med["dp"] / med["dp-unsorted"]}
    tokens = int(batch["attention_mask"].sum())
    out = {"args": vars(args), "machine": machine(), "batch_shape": list(batch["input_ids"].shape),
           "real_tokens": tokens, "medians_s": med, "ratios": ratios, "samples": res,
           "command": "HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.physical_batch"}
    write_result("physical_batch", out)
    for k, v in med.items():
        print(f"{k:16s} {v:7.2f} s")
    for k, v in ratios.items():
        print(f"{k:24s} {v:.2f}")


if __name__ == "__main__":
    main()
