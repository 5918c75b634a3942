"""A secure deployment on loopback with real data: MiniLM on SST-2, 2 SuperNodes, FedTT, 3 rounds.

`fedtt_flwr.deploy.loopback`: a SuperLink with TLS and SuperNode authentication, 2 registered SuperNodes on
partitions 0 and 1 of SST-2 (Dirichlet 0.5), one unregistered SuperNode (refused), then the app. Records per
round the wall time and the bytes up and down, as the strategy counts them and as Flower transmits them;
writes results/deployment.json and the "measured" block of docs/deployment.md.

    .venv/bin/python -m benchmarks.deployment
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from benchmarks._common import RESULTS, machine, publish, write_result
from fedtt_flwr.data import default_data_dir
from fedtt_flwr.deploy import loopback, node_config

DOC = RESULTS.parents[1] / "docs" / "deployment.md"
NODES = 2
RUN = {"model": "minilm", "task": "sst2", "method": "fedtt", "num-server-rounds": 3, "local-steps": 10,
       "batch-size": 16, "max-length": 64, "min-clients": NODES, "central-eval": True, "run-name": "deployment",
       "pack-arrays": False}  # as measured; packed sizes: benchmarks/wire_bytes.py
COMMAND = ".venv/bin/python -m benchmarks.deployment"


def measure() -> dict:
    data = str(default_data_dir().resolve())
    work = Path(tempfile.mkdtemp(prefix="fedtt-deploy-bench-"))
    run = {**RUN, "data-dir": data, "output-dir": str(work / "runs")}
    result = loopback(work / "federation", run, [node_config(data, i, NODES) for i in range(NODES)], stream=False)
    lines = [json.loads(x) for x in (work / "runs" / "deployment" / "metrics.jsonl").read_text().splitlines()]
    rounds = []
    for prev, line in zip(lines, lines[1:], strict=False):
        rounds.append({k: line.get(k) for k in ("round", "accuracy", "bytes_up", "bytes_down", "wire_bytes_up",
                                                "wire_bytes_down", "replies", "errors")}
                      | {"round_s": round(line["elapsed_s"] - prev["elapsed_s"], 1)})
    return {"settings": run, "loopback": result, "rounds": rounds, "machine": machine(), "command": COMMAND}


def table(r: dict) -> str:
    lb = r["loopback"]
    rows = [f"`{r['command']}` (MiniLM, SST-2, {NODES} SuperNodes on partitions of Dirichlet(0.5), FedTT rank 5, "
            f"{r['settings']['local-steps']} local steps of {r['settings']['batch-size']}, max length "
            f"{r['settings']['max-length']}, pack-arrays {str(r['settings'].get('pack-arrays')).lower()}, central dev "
            "evaluation on the server; 2 CPU cores shared by the SuperLink, the ServerApp, both SuperNodes and "
            "one other benchmark process): run status `" + str(lb["status"]) + "`; the "
            f"unregistered SuperNode exited with code {lb['unregistered_exit_code']} (refused) and "
            f"{lb['online_after_unregistered']} nodes stayed online; SuperLink ready in {lb['superlink_ready_s']} s, "
            f"nodes online after {lb['nodes_online_s']} s, the run took {lb['run_s']} s.", "",
            "| round | wall s | dev acc | bytes up (strategy) | bytes up (Flower messages) | bytes down (strategy) "
            "| bytes down (Flower messages) |", "|---|---|---|---|---|---|---|"]
    for x in r["rounds"]:
        acc = f"{100 * x['accuracy']:.1f} %" if x.get("accuracy") is not None else "-"
        rows.append(f"| {x['round']} | {x['round_s']} | {acc} | {x['bytes_up']:,} | {x['wire_bytes_up']:,} | "
                    f"{x['bytes_down']:,} | {x['wire_bytes_down']:,} |")
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
