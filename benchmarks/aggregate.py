"""Server aggregation of many client updates of TT factors, timed on its own (no training, no network).

The FedTT strategy (numpy and Flower records only) receives N replies of MiniLM's TT adapter state (122
tensors, 16,370 values; distinct random values per client) and aggregates them; the time of
``aggregate_train`` alone (validation included), median of several repetitions, for N in {10, 100, 1000}:
with Flower's FedAvg inside (unpacked replies), with FastFedAvg (unpacked, and packed: one flat array per
reply, averaged as it is), and FedTT+ (one round's trainable cores) with FastFedAvg, packed. Writes
results/aggregate.json and the table of docs/performance.md.

``--model llama-2-7b``: the TT state of LLaMA-2-7B's shape (built on the meta device, random values; the app's
decoder adapters at rank 5: about 1 MB a reply), the default path only (FedTT, FastFedAvg, packed), next to this
machine's memory bandwidth measured in the same run (numpy reading and copying a 2 GB array): the aggregation reads
every reply once to check it and once to average it, so the bound is about twice the replies' bytes at the read
bandwidth. Writes results/aggregate-llama-2-7b.json and docs/performance.md's ``aggregate-7b`` block.

    .venv/bin/python -m benchmarks.aggregate [--clients 10,100,1000] [--reps 5]
    .venv/bin/python -m benchmarks.aggregate --model llama-2-7b --clients 1000 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from benchmarks._common import RESULTS, machine, publish, write_result
from fedtt_flwr.adapters import get_adapter_state
from fedtt_flwr.config import RunConfig
from fedtt_flwr.inprocess import InProcessGrid
from fedtt_flwr.methods import build_model
from strategies import FastFedAvg, FedTT, FedTTPlus, make_schedule, named_arrays, reply_content, round_trainable

DOC = RESULTS.parents[1] / "docs" / "performance.md"


def minilm_state() -> dict[str, np.ndarray]:
    model, _ = build_model(RunConfig.from_flower({"model": "minilm", "task": "sst2", "method": "fedtt"}))
    return {n: t.numpy() for n, t in get_adapter_state(model).items()}


def meta_state(model: str) -> dict[str, np.ndarray]:
    """The adapter state the app gives ``model`` (decoders: causal-LM TT adapters), as random float32 arrays of its
    shapes: the architecture is built on the meta device, so a 7B model costs no memory."""
    from fedtt_flwr.adapters import add_tt_adapters
    from fedtt_flwr.methods.build import resolve
    from fedtt_flwr.models import build_empty_model

    cfg = RunConfig.from_flower({"model": model, "method": "fedtt"})
    net = add_tt_adapters(build_empty_model(model, "causal-lm"), resolve(cfg).adapter_config(cfg))
    params = dict(net.named_parameters())
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(tuple(params[n].shape)).astype(np.float32) * 0.1 for n in net.fedtt_state_names}


def bandwidth(gigabytes: float = 2.0, reps: int = 5) -> dict[str, float]:
    """This machine's memory bandwidth as numpy sees it (GB/s, medians): reading (a sum) and copying a large array."""
    a = np.ones(int(gigabytes * 1e9 / 4), dtype=np.float32)
    b = np.empty_like(a)
    reads, copies = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        reads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        np.copyto(b, a)
        copies.append(time.perf_counter() - t0)
    return {"read_gb_s": a.nbytes / 1e9 / statistics.median(reads),
            "copy_gb_s": 2 * a.nbytes / 1e9 / statistics.median(copies)}


def large(model: str, n: int, reps: int) -> None:
    """1,000 (``n``) replies of a large model's TT state through FedTT's default path, against the bandwidth."""
    state = meta_state(model)
    times, reply_bytes = [], 0
    for rep in range(reps):
        strategy = make("fast packed", n)
        replies = replies_for(strategy, state, n, seed=rep)
        reply_bytes = sum(r.content["arrays"].count_bytes() for r in replies)
        t0 = time.perf_counter()
        agg, _ = strategy.aggregate_train(1, replies)
        times.append(time.perf_counter() - t0)
        assert agg is not None and strategy.rounds[1]["replies"] == n
        del replies, strategy
        print(f"{model}: N={n} rep {rep}: {times[-1]:.3f} s", flush=True)
    bw = bandwidth()
    median = statistics.median(times)
    result = {"model": model, "clients": n, "tensors": len(state), "values": int(sum(v.size for v in state.values())),
              "reply_mb": reply_bytes / n / 1e6, "replies_gb": reply_bytes / 1e9, "median_s": median,
              "samples_s": [round(t, 3) for t in times], "achieved_gb_s": reply_bytes / 1e9 / median, **bw,
              "machine": machine(),
              "command": f".venv/bin/python -m benchmarks.aggregate --model {model} --clients {n} --reps {reps}"}
    write_result(f"aggregate-{model}", result)
    table = ("| model | replies | MB / reply | replies GB | aggregate_train (median) | replies GB / s "
             "| numpy read GB/s "
             "| numpy copy GB/s |\n|---|---|---|---|---|---|---|---|\n"
             f"| {model} | {n} | {result['reply_mb']:.2f} | {result['replies_gb']:.2f} | {median:.2f} s "
             f"| {result['achieved_gb_s']:.2f} | {bw['read_gb_s']:.1f} | {bw['copy_gb_s']:.1f} |")
    publish(DOC, {"aggregate-7b": table})


def replies_for(strategy: FedTT, state: dict[str, np.ndarray], n: int, seed: int) -> list[Message]:
    """Configure round 1 for ``n`` nodes and answer every instruction as a client would."""
    grid = InProcessGrid(lambda m, c: None, n, keep_sent=False)
    arrays = ArrayRecord({k: Array(v) for k, v in state.items()})
    rng = np.random.default_rng(seed)
    out = []
    for msg in strategy.configure_train(1, arrays, ConfigRecord(), grid):
        names = round_trainable(msg.content)
        received = named_arrays(msg.content)
        trained = ArrayRecord({k: Array(received[k].numpy() + rng.standard_normal(received[k].shape)
                                         .astype(np.float32) * 1e-3) for k in names})
        metrics = MetricRecord({"num-examples": int(rng.integers(50, 100)), "train-loss": 0.5})
        out.append(Message(reply_content(msg.content, trained, metrics),
                           reply_to=_delivered(msg)))
    return out


def _delivered(msg: Message) -> Message:
    """An instruction as a node receives it: with a message id (replies point to it)."""
    msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}"
    msg.metadata.__dict__["_src_node_id"] = 1
    return msg


VARIANTS = ("flower fedavg", "fast", "fast packed", "fedtt+ fast packed")


def make(variant: str, n: int) -> FedTT:
    """FedTT with Flower's FedAvg (unpacked replies) or with FastFedAvg (unpacked or packed), or FedTT+."""
    cls = FedAvg if variant.startswith("flower") else FastFedAvg
    inner = cls(fraction_train=1.0, min_train_nodes=n, min_available_nodes=n, fraction_evaluate=0.0)
    pack = variant.endswith("packed")
    if variant.startswith("fedtt+"):
        return FedTTPlus(inner, schedule=make_schedule("cyclic"), pack=pack)
    return FedTT(inner, pack=pack)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", default="minilm", help="minilm (the variants) or a large decoder (meta_state)")
    args = ap.parse_args()
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # Messages outside a Flower runtime
    if args.model != "minilm":
        return large(args.model, int(args.clients), args.reps)
    state = minilm_state()
    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        for variant in VARIANTS:
            times = []
            for rep in range(args.reps):
                strategy = make(variant, n)
                replies = replies_for(strategy, state, n, seed=rep)
                t0 = time.perf_counter()
                agg, _ = strategy.aggregate_train(1, replies)
                times.append(time.perf_counter() - t0)
                assert agg is not None and strategy.rounds[1]["replies"] == n
            rows.append({"clients": n, "variant": variant, "median_s": statistics.median(times),
                         "samples_s": [round(t, 4) for t in times]})
            print(f"N={n:5d} {variant:14s} median {rows[-1]['median_s']:.4f} s", flush=True)
    write_result("aggregate", {"rows": rows, "tensors": len(state), "values": int(sum(v.size for v in state.values())),
                               "machine": machine(), "command": ".venv/bin/python -m benchmarks.aggregate"})
    text = ["| clients N | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for n in sorted({r["clients"] for r in rows}):
        text.append(f"| {n} | " + " | ".join(f"{r['median_s']:.3f} s" for r in rows if r["clients"] == n) + " |")
    publish(DOC, {"aggregate": "\n".join(text)})


if __name__ == "__main__":
    main()
