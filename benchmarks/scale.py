"""Cross-device scale: the Ray simulation (`flwr run`) with N clients, 10 sampled per round.

For N in {10, 100, 1000, ...} (MiniLM, SST-2 split IID over N clients, FedTT, a few local steps), with one SuperNode
per client or (``--virtual``) 10 SuperNodes serving N virtual clients (run config ``virtual-clients``): per round the
wall time, the clients' own training time (summed, and per Ray worker), the server's aggregation time; peak
RSS of the simulation driver (ServerApp + Ray driver), of the Ray workers (ClientApp actors) and of the rest
(SuperLink, raylet, GCS), sampled every 0.5 s. One JSON per N in results/scale/ (a rerun skips finished N),
a plot of these against N, and the table of docs/performance.md.

    .venv/bin/python -m benchmarks.scale [--clients 10,100,1000] [--rounds 3] [--virtual] [--repeat 2] [--report]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks._common import RESULTS, machine, publish
from benchmarks.grid import save_figure
from fedtt_flwr.data import default_data_dir
from fedtt_flwr.launch import simulate

OUT = RESULTS / "scale"
RUNS = RESULTS.parent / "out" / "scale"
DOC = RESULTS.parents[1] / "docs" / "performance.md"
PER_ROUND = 10
WORKERS = 2  # Ray actors: client-resources-num-cpus = 1 on 2 cores
BASE = {"model": "minilm", "task": "sst2", "method": "fedtt", "partition": "iid", "local-steps": 5, "batch-size": 16,
        "max-length": 64, "central-eval": False, "min-clients": PER_ROUND}


class RssSampler(threading.Thread):
    """Peak summed RSS (MB) of the simulation's processes, by kind, sampled with ``ps`` every 0.5 s."""

    KINDS = (("workers", ("ray::", "default_worker.py")), ("driver", ("flwr-simulation",)),
             ("flower+ray services", ("flower-superlink", "flower-superexec", "raylet", "gcs_server",
                                      "dashboard", "log_monitor", "ray/_private")))

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.halt = {k: 0.0 for k, _ in self.KINDS}, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            out = subprocess.run(["ps", "-eo", "rss=,args="], capture_output=True, text=True).stdout
            now = {k: 0.0 for k, _ in self.KINDS}
            for line in out.splitlines():
                rss, _, args = line.strip().partition(" ")
                for kind, needles in self.KINDS:
                    if any(n in args for n in needles):
                        now[kind] += int(rss) / 1024
                        break
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.halt.wait(0.5)


class Profiler(threading.Thread):
    """py-spy (``pip install py-spy``) on the simulation driver (``flwr-simulation``: the ServerApp, Flower's
    delivery loop and the Ray driver share its GIL) for ``seconds``, from when it appears: collapsed stacks of
    the threads holding the GIL, to ``path``."""

    def __init__(self, seconds: int, path: Path) -> None:
        super().__init__(daemon=True)
        self.seconds, self.path = seconds, path

    def run(self) -> None:
        for _ in range(600):
            out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
            pids = [line.split()[0] for line in out.splitlines() if "flwr-simulation" in line]
            if pids:
                subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--nonblocking",
                                "-d", str(self.seconds), "-f", "raw", "-o", str(self.path), "-p", pids[0]],
                               capture_output=True)
                return
            time.sleep(0.5)


def top_frames(path: Path, n: int = 12) -> list[tuple[str, float]]:
    """The functions in the most GIL-holding samples (inclusive share), from py-spy's collapsed stacks."""
    total, counts = 0, {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(stack.split(";")) - {""}:
            if "threading.py" not in frame:  # every thread's bootstrap frames: in every sample
                counts[frame] = counts.get(frame, 0) + int(count)
    return [(frame, c / total) for frame, c in sorted(counts.items(), key=lambda x: -x[1])[:n]]


def cell_name(n: int, virtual: bool, repeat: int) -> str:
    return f"{'v' if virtual else 'n'}{n}{'' if repeat == 1 else f'-x{repeat}'}"


def repeated_sst2(repeat: int) -> dict:
    """SST-2's training sentences ``repeat`` times as a custom task (the data folder has no task with 10^5 rows;
    what is measured here is the framework, not accuracy), written under benchmarks/out/scale/, never committed."""
    folder = RUNS / f"sst2-x{repeat}"
    source = default_data_dir().resolve() / "glue" / "SST-2"
    if not (folder / "train.tsv").exists():
        folder.mkdir(parents=True, exist_ok=True)
        header, *rows = (source / "train.tsv").read_text().splitlines()
        (folder / "train.tsv").write_text("\n".join([header, *rows * repeat]) + "\n")
    return {"task": "custom", "train-file": str(folder / "train.tsv"), "dev-file": str(source / "dev.tsv"),
            "text-columns": "sentence", "label-column": "label", "labels": "0,1"}


def run(n: int, rounds: int, virtual: bool = False, repeat: int = 1, profile: int = 0) -> dict:
    """One simulation: N SuperNodes, or (``virtual``) ``PER_ROUND`` SuperNodes serving N virtual clients;
    ``profile``: that many seconds of py-spy on the driver."""
    name = cell_name(n, virtual, repeat)
    cfg = {**BASE, "num-server-rounds": rounds, "fraction-train": PER_ROUND / n, "run-name": name,
           "output-dir": str(RUNS), "data-dir": str(default_data_dir().resolve())}
    if repeat > 1:
        cfg.update(repeated_sst2(repeat))
    if virtual:
        cfg["virtual-clients"] = n
    shutil.rmtree(RUNS / name, ignore_errors=True)  # an interrupted run starts over (a run folder is never shared)
    sampler = RssSampler()
    sampler.start()
    profiler = Profiler(profile, OUT / f"{name}-profile.txt") if profile else None
    if profiler:
        profiler.start()
    t0 = time.perf_counter()
    code = simulate(num_supernodes=PER_ROUND if virtual else n, run_config=cfg, cpus_per_client=1, stream=False,
                    timeout=3 * 3600)
    wall = time.perf_counter() - t0
    sampler.halt.set()
    sampler.join()
    if code != 0:
        raise RuntimeError(f"the simulation with {n} clients did not complete")
    lines = [json.loads(x) for x in (RUNS / name / "metrics.jsonl").read_text().splitlines()][1:]
    rounds_out = []
    for x in lines:
        train_wall = x["client_train_s_sum"] / min(WORKERS, x["replies"])  # the workers train in parallel
        rounds_out.append({"round": x["round"], "round_s": round(x["round_s"], 2),
                           "aggregate_s": round(x["aggregate_s"], 4),
                           "client_train_s_sum": round(x["client_train_s_sum"], 2),
                           "train_wall_s": round(train_wall, 2),
                           "overhead_share": round(1 - train_wall / x["round_s"], 3),
                           "replies": x["replies"]})
    if profiler:
        profiler.join(timeout=60)
    frames = top_frames(OUT / f"{name}-profile.txt") if profiler and (OUT / f"{name}-profile.txt").exists() else []
    return {"clients": n, "virtual": virtual, "supernodes": PER_ROUND if virtual else n,
            "driver_profile": [[f, round(share, 3)] for f, share in frames],
            "data": "SST-2" if repeat == 1 else f"SST-2 x{repeat}",
            "per_round": PER_ROUND, "settings": cfg, "wall_s": round(wall, 1),
            "peak_rss_mb": {k: round(v) for k, v in sampler.peak.items()}, "rounds": rounds_out,
            "machine": machine(),
            "command": f".venv/bin/python -m benchmarks.scale --clients {n}{' --virtual' if virtual else ''}"
                       f"{'' if repeat == 1 else f' --repeat {repeat}'}"}


def summary(r: dict) -> dict:
    later = r["rounds"][1:] or r["rounds"]  # round 1 pays the actors' model load and the first partitioning
    med = {k: statistics.median(x[k] for x in later) for k in ("round_s", "aggregate_s", "train_wall_s",
                                                                "overhead_share")}
    # in seconds too: the share alone shrinks or grows with how much data each client trains on
    overhead_s = statistics.median(x["round_s"] - x["train_wall_s"] for x in later)
    return {**med, "overhead_s": overhead_s, "first_round_s": r["rounds"][0]["round_s"]}


def table(results: list[dict]) -> str:
    rows = ["| clients N | SuperNodes | data | sampled per round | round 1 s | round s (median of later rounds) | "
            "clients' training, wall s | framework overhead | framework overhead s | aggregation s | "
            "peak RSS driver MB | peak RSS workers MB | peak RSS Flower+Ray services MB | whole run s |",
            "|---" * 14 + "|"]
    for r in results:
        s = summary(r)
        p = r["peak_rss_mb"]
        virtual = r.get("virtual", False)
        rows.append(f"| {r['clients']:,}{' virtual' if virtual else ''} | {r.get('supernodes', r['clients']):,} | "
                    f"{r.get('data', 'SST-2')} | {r['per_round']} | {s['first_round_s']:.1f} | "
                    f"{s['round_s']:.1f} | "
                    f"{s['train_wall_s']:.1f} | {100 * s['overhead_share']:.0f} % | {s['overhead_s']:.1f} | "
                    f"{s['aggregate_s']:.3f} | "
                    f"{p['driver']:,} | {p['workers']:,} | {p['flower+ray services']:,} | {r['wall_s']:.0f} |")
    return "\n".join(rows)


def plot(results: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for virtual, style in ((False, "-"), (True, "--")):
        runs = [r for r in results if r.get("virtual", False) == virtual]
        if not runs:
            continue
        ns, tag = [r["clients"] for r in runs], " (virtual)" if virtual else ""
        for key, label in (("round_s", "round"), ("train_wall_s", "clients' training (wall)"),
                           ("aggregate_s", "aggregation")):
            a.plot(ns, [summary(r)[key] for r in runs], style, marker="o", label=label + tag)
        for kind in ("driver", "workers", "flower+ray services"):
            b.plot(ns, [r["peak_rss_mb"][kind] for r in runs], style, marker="o", label=kind + tag)
    a.set_xscale("log")
    a.set_xlabel("clients N (10 per round)")
    a.set_ylabel("seconds per round (median)")
    a.legend(fontsize=7)
    b.set_xscale("log")
    b.set_xlabel("clients N")
    b.set_ylabel("peak RSS, MB")
    b.legend(fontsize=7)
    fig.suptitle("Ray simulation, MiniLM + FedTT, SST-2")
    return save_figure(fig, OUT / "scale.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--virtual", action="store_true", help=f"{PER_ROUND} SuperNodes serve the N clients "
                    "(virtual-clients = N) instead of one SuperNode per client")
    ap.add_argument("--repeat", type=int, default=1, help="SST-2's 67,349 training sentences this many times "
                    "(N clients need at least N rows)")
    ap.add_argument("--profile", type=int, default=0, help="seconds of py-spy on the simulation driver")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for n in (int(x) for x in args.clients.split(",")):
            path = OUT / f"{cell_name(n, args.virtual, args.repeat)}.json"
            if path.exists():
                print(f"skip {path.stem}: done", flush=True)
                continue
            print(f"[scale] {path.stem}", flush=True)
            path.write_text(json.dumps(run(n, args.rounds, args.virtual, args.repeat, args.profile), indent=1))
    results = sorted((json.loads(p.read_text()) for p in OUT.glob("[nv]*.json")),
                     key=lambda r: (r["clients"], r.get("virtual", False)))
    if not results:
        raise SystemExit("no results yet")
    plot(results)
    text = table(results)
    publish(DOC, {"scale": text})


if __name__ == "__main__":
    main()
