"""FedTT vs FedTT+ through the real `flwr run` path: MiniLM, SST-2, 10 clients, Dirichlet(0.5).

For each method: final central dev accuracy, total MB up and down, uplink bytes per round, wall time,
and the peak RSS of every Ray ClientAppActor process (sampled every second), to show that a client
process holds one backbone however many clients it serves. Results go to
benchmarks/results/federated_sst2.json as each run finishes; finished runs are skipped on a rerun.

    .venv/bin/python benchmarks/federated_sst2.py [--rounds 20] [--methods fedtt,fedtt+]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

from benchmarks._common import RESULTS
from fedtt_flwr.data import default_data_dir
from fedtt_flwr.launch import simulate


class RssSampler(threading.Thread):
    """Peak RSS (MB) per process whose command line contains ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__(daemon=True)
        self.pattern, self.peak, self._halt = pattern, {}, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            out = subprocess.run(["ps", "-eo", "pid=,rss=,args="], capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, rss, args = line.strip().split(None, 2)
                if self.pattern in args:
                    self.peak[pid] = max(self.peak.get(pid, 0), int(rss) / 1024)
            self._halt.wait(1.0)

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        return {pid: round(mb, 1) for pid, mb in self.peak.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--methods", default="fedtt,fedtt+")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "federated_sst2.json"))
    args = ap.parse_args()
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    runs_dir = RESULTS.parent / "out" / "federated_sst2"
    for method in args.methods.split(","):
        key = f"{method}-r{args.rounds}-c{args.clients}-s{args.seed}"
        if key in results:
            print(f"skip {key}: done")
            continue
        name = key.replace("+", "plus")
        config = {"method": method, "num-server-rounds": args.rounds, "seed": args.seed, "run-name": name,
                  "output-dir": str(runs_dir), "data-dir": str(default_data_dir())}
        folder = runs_dir / name
        if (folder / "summary.json").exists():  # finished earlier, its result not recorded: reuse it
            code, wall, rss = 0, None, None
        else:
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted run starts over (a folder is never shared)
            sampler = RssSampler("ClientAppActor")
            sampler.start()
            t0 = time.perf_counter()
            code = simulate(num_supernodes=args.clients, run_config=config, stream=False)
            wall = time.perf_counter() - t0
            rss = sampler.stop()
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((folder / "summary.json").read_text()) if code == 0 else {}
        results[key] = {
            "method": method, "status": "completed" if code == 0 else "failed",
            "wall_s": round(wall, 1) if wall else None,
            "final_accuracy": lines[-1].get("accuracy"), "accuracy_by_round": [x.get("accuracy") for x in lines],
            "bytes_up_per_round": lines[-1]["bytes_up"], "bytes_down_per_round": [x["bytes_down"] for x in lines],
            "total_mb_up": round(lines[-1]["total_bytes_up"] / 1e6, 3),
            "total_mb_down": round(lines[-1]["total_bytes_down"] / 1e6, 3),
            "client_actor_peak_rss_mb": rss, "server_wall_s": summary.get("wall_s"),
            "command": f"benchmarks/federated_sst2.py --rounds {args.rounds} --methods {method}",
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results[key]))


if __name__ == "__main__":
    main()
