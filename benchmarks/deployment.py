"""A secure deployment on loopback with real data against the Ray simulation of the same work: MiniLM on SST-2,
2 nodes, FedTT, 3 rounds.

Three runs side by side, one after the other in one invocation: `fedtt_flwr.deploy.loopback` (a SuperLink with TLS
and SuperNode authentication, 2 registered SuperNodes on partitions 0 and 1 of SST-2 (Dirichlet 0.5), one
unregistered SuperNode, refused) with a training worker beside each SuperNode ("worker"), the same without workers
(every message a fresh ClientApp process that loads the model: "clientapp"), and `fedtt-flwr simulate` with 2
virtual SuperNodes ("simulation"). Records per round the wall time and the bytes up and down (as the strategy counts
them and as Flower transmits them); writes results/deployment.json and the "measured" block of docs/deployment.md.

    .venv/bin/python -m benchmarks.deployment
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS, machine, publish, write_result
from fedtt_flwr.data import default_data_dir
from fedtt_flwr.deploy import loopback, node_config

DOC = RESULTS.parents[1] / "docs" / "deployment.md"
NODES = 2
RUN = {"model": "minilm", "task": "sst2", "method": "fedtt", "num-server-rounds": 3, "local-steps": 10,
       "batch-size": 16, "max-length": 64, "min-clients": NODES, "central-eval": True}
COMMAND = ".venv/bin/python -m benchmarks.deployment"


def _rounds(folder: Path) -> list[dict]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: line.get(k) for k in ("round", "accuracy", "bytes_up", "bytes_down", "wire_bytes_up",
                                      "wire_bytes_down", "replies", "errors")}
            | {"round_s": round(line["elapsed_s"] - prev["elapsed_s"], 1)}
            for prev, line in zip(lines, lines[1:], strict=False)]


def measure() -> dict:
    from fedtt_flwr.launch import simulate

    data = str(default_data_dir().resolve())
    work = Path(tempfile.mkdtemp(prefix="fedtt-deploy-bench-"))
    result: dict = {"machine": machine(), "command": COMMAND}
    for variant in ("worker", "clientapp"):
        run = {**RUN, "data-dir": data, "output-dir": str(work / "runs"), "run-name": variant}
        lb = loopback(work / variant, run, [node_config(data, i, NODES) for i in range(NODES)], stream=False,
                      workers=variant == "worker")
        result[variant] = {"loopback": lb, "rounds": _rounds(work / "runs" / variant)}
    run = {**RUN, "data-dir": data, "output-dir": str(work / "runs"), "run-name": "simulation"}
    started = time.monotonic()
    code = simulate(NODES, run, flwr_home=str(work / "sim-home"), stream=False)
    result["simulation"] = {"exit_code": code, "run_s": round(time.monotonic() - started, 1),
                            "rounds": _rounds(work / "runs" / "simulation")}
    result["settings"] = RUN
    return result


def median_round(r: dict, variant: str) -> float:
    return statistics.median(x["round_s"] for x in r[variant]["rounds"])


def table(r: dict) -> str:
    lb, settings = r["worker"]["loopback"], r["settings"]
    sim = median_round(r, "simulation")
    rows = [f"`{r['command']}` (MiniLM, SST-2, {NODES} nodes on partitions of Dirichlet(0.5), FedTT rank 5, "
            f"{settings['local-steps']} local steps of {settings['batch-size']}, max length {settings['max-length']}, "
            f"pack-arrays {str(settings.get('pack-arrays', True)).lower()}, central dev evaluation on the server; "
            "2 CPU cores shared by the SuperLink, the ServerApp and both SuperNodes): run status `" + str(lb["status"])
            + f"`; the unregistered SuperNode exited with code {lb['unregistered_exit_code']} (refused) and "
            f"{lb['online_after_unregistered']} nodes stayed online; SuperLink ready in {lb['superlink_ready_s']} s, "
            f"nodes online after {lb['nodes_online_s']} s. The workers loaded the backbone "
            f"{[w['model_loads'] for w in lb['workers']]} times and served {[w['requests'] for w in lb['workers']]} "
            "requests (per node).", "",
            "| round | wall s: loopback + worker | loopback, ClientApp loads the model | Ray simulation "
            "| dev acc | bytes up (strategy) | bytes up (Flower messages) | bytes down (strategy) "
            "| bytes down (Flower messages) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for x, c, s in zip(r["worker"]["rounds"], r["clientapp"]["rounds"], r["simulation"]["rounds"], strict=True):
        acc = f"{100 * x['accuracy']:.1f} %" if x.get("accuracy") is not None else "-"
        rows.append(f"| {x['round']} | {x['round_s']} | {c['round_s']} | {s['round_s']} | {acc} | {x['bytes_up']:,} | "
                    f"{x['wire_bytes_up']:,} | {x['bytes_down']:,} | {x['wire_bytes_down']:,} |")
    rows.append(f"| median | **{median_round(r, 'worker')}** ({median_round(r, 'worker') / sim:.2f}x the simulation) "
                f"| {median_round(r, 'clientapp')} ({median_round(r, 'clientapp') / sim:.2f}x) | {sim} | | | | | |")
    return "\n".join(rows)


def main() -> None:
    path = RESULTS / "deployment.json"
    if "--report" not in sys.argv:
        write_result("deployment", measure())
    r = json.loads(path.read_text())
    text = table(r)
    publish(DOC, {"measured": text})


if __name__ == "__main__":
    main()
