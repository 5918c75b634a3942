"""One cross-silo client's DP-SGD, probed: how a setting learns before a federated grid spends hours on it.

The client a 3-client IID federation of SST-2 would have (partition 0 of 3, ~22k sentences), MiniLM with the
method's adapters, DP-SGD with the noise planned for ``--steps`` steps at ``--eps`` (delta 1e-5, as the run
config plans it); dev accuracy every ``--eval-every`` steps. Expected batch ``--batch`` in pieces of
``--physical`` (physical-batch). One JSON per probe in benchmarks/results/dp_probe/ (named by its settings; a
finished one is skipped).

    .venv/bin/python -m benchmarks.dp_probe --eps 8 --batch 512 --steps 60 --lr 1e-3
    .venv/bin/python -m benchmarks.dp_probe --report
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from benchmarks._common import RESULTS
from fedtt_flwr.config import RunConfig
from fedtt_flwr.privacy import dp_train_steps, settings_for, spent_epsilon

OUT = RESULTS / "dp_probe"


def probe(args: argparse.Namespace) -> dict:
    from fedtt_flwr.client import client_data, session
    from fedtt_flwr.data import default_data_dir, load_dev
    from fedtt_flwr.methods import prompt_task
    from fedtt_flwr.tasks import task_of
    from fedtt_flwr.train import evaluate, make_loader, make_optimizer, tokenize

    dp = {"dp": "epsilon", "dp-epsilon": args.eps} if args.eps else {"dp": "sigma", "dp-noise-multiplier": 0.0}
    cfg = RunConfig.from_flower({
        "model": "minilm", "task": "sst2", "method": args.method, "partition": "iid", "max-length": 64,
        "batch-size": args.batch, "lr": args.lr, "optimizer": args.optimizer, "num-server-rounds": 1,
        "local-steps": args.steps, "dp-max-grad-norm": args.clip, "physical-batch": args.physical,
        "data-dir": str(default_data_dir()), "seed": args.seed, **dp})
    torch.manual_seed(args.seed)
    sess = session(cfg)
    model = sess.model
    data = client_data(cfg, 0, args.clients, "train")
    settings, q = settings_for(cfg, len(data))
    dev_raw, _ = load_dev(task_of(cfg), cfg.data_dir)
    dev = make_loader(tokenize(dev_raw, sess.tokenizer, cfg.max_length, prompt_task(cfg)), sess.tokenizer, 256,
                      shuffle=False, prompt_task=prompt_task(cfg))
    loader = make_loader(data, sess.tokenizer, cfg.batch_size, shuffle=True, seed=args.seed,
                         prompt_task=prompt_task(cfg))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, cfg.local_optimizer, cfg.base_lr, cfg.weight_decay, cfg.momentum)
    curve, done, t0 = [], 0, time.perf_counter()
    curve.append({"step": 0, "accuracy": evaluate(model, dev, task_of(cfg), sess.device)["accuracy"]})
    while done < args.steps:
        k = min(args.eval_every, args.steps - done)
        stats = dp_train_steps(model, loader, optimizer, k, sess.device, settings, args.seed * 1000 + done)
        done += k
        acc = evaluate(model, dev, task_of(cfg), sess.device)["accuracy"]
        curve.append({"step": done, "accuracy": acc, "train_loss": stats["train_loss"],
                      "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[dp-probe] step {done}/{args.steps}  dev accuracy {acc:.4f}  loss {stats['train_loss']:.4f}  "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    return {"args": vars(args), "examples": len(data), "sigma": settings.noise_multiplier, "q": q,
            "epsilon": spent_epsilon([(settings.noise_multiplier, q, args.steps)], settings.delta),
            "trainable": sum(p.numel() for p in trainable), "curve": curve,
            "final": curve[-1]["accuracy"], "best": max(c["accuracy"] for c in curve[1:]),
            "wall_s": round(time.perf_counter() - t0, 1)}


def name(args: argparse.Namespace) -> str:
    return (f"{args.method}-eps{args.eps:g}-b{args.batch}-s{args.steps}-lr{args.lr:g}-{args.optimizer}-c{args.clip:g}"
            f"-seed{args.seed}").replace("+", "plus")


def report() -> None:
    rows = ["| probe | sigma | epsilon | accuracy at steps | final | best | wall |", "|---|---|---|---|---|---|---|"]
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        curve = ", ".join(f"{c['step']}: {100 * c['accuracy']:.1f}" for c in r["curve"])
        rows.append(f"| {path.stem} | {r['sigma']:.3f} | {r['epsilon']:.2f} | {curve} | {100 * r['final']:.1f} | "
                    f"{100 * r['best']:.1f} | {r['wall_s'] / 60:.0f} min |")
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="fedtt")
    ap.add_argument("--eps", type=float, default=8.0, help="0: no noise (clipping only)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--physical", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report:
        path = OUT / f"{name(args)}.json"
        if not path.exists():
            path.write_text(json.dumps(probe(args), indent=1))
    report()


if __name__ == "__main__":
    main()
