"""Every registered method at today's defaults, and clients with different TT ranks: MiniLM, 10 clients with
Dirichlet(0.5) label skew, 5 per round, SST-2 and MRPC, 3 seeds.

Each cell runs this project's ServerApp and ClientApp in-process (fedtt_flwr.inprocess). Unlike
``benchmarks/grid.py`` (which pins the settings of the original study), cells here take the app's current
defaults (packed messages, AdamW 3e-3, LayerNorm gains, logit adjustment, mean pooling where the checkpoint was
trained so): the "current best settings" of every method. The heterogeneous block: FedTT with the global adapter
at rank 8 and the 10 clients at ranks 2, 5, 8 (cyclically, ``node-ranks``), against the homogeneous rank-5 FedTT
cells; FLoRA with clients at LoRA ranks 4, 8, 16 against the homogeneous rank-8 FLoRA. One JSON per finished
cell in benchmarks/results/baselines/ (a rerun resumes); ``--report`` writes the table (final metric, bytes per
round both ways, MB to LoRA's final level minus one point) and the plot into docs/results.md between its
``baselines`` markers.

    HF_HUB_OFFLINE=1 nohup .venv/bin/python -m benchmarks.baselines > baselines.log 2>&1 &
    .venv/bin/python -m benchmarks.baselines --list
    .venv/bin/python -m benchmarks.baselines --report
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from benchmarks._common import RESULTS, app_cell, cells_main, mb_axis, mb_to_level, publish, save_plot

OUT = RESULTS / "baselines"
DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"
RUNS = RESULTS.parent / "out" / "baselines"
TASKS = ("sst2", "mrpc")
CLIENTS, PER_ROUND = 10, 5
COMMON = {"model": "minilm", "num-server-rounds": 10, "local-steps": 10, "batch-size": 16, "partition": "dirichlet",
          "alpha": 0.5, "fraction-train": PER_ROUND / CLIENTS, "min-clients": PER_ROUND, "eval-every": 1,
          "eval-batch-size": 64}
MAX_LENGTH = {"sst2": 64, "mrpc": 128}
#: the heterogeneous block's variants (methods "fedtt-hetero" and "flora-hetero" in the tables)
HETERO = {"fedtt-hetero": {"method": "fedtt", "rank": 8, "node-ranks": "2,5,8"},
          "flora-hetero": {"method": "flora", "lora-rank": 16, "node-ranks": "4,8,16"}}


def methods() -> tuple[str, ...]:
    """Every registered method, then the heterogeneous block."""
    from fedtt_flwr.methods import all_methods

    return (*(m.name for m in all_methods()), *HETERO)


def personal(method: str) -> bool:
    """A personalised method (FedSA-LoRA) has no one global model: each node scores its own on its IID share of
    dev (federated evaluation of all 10 nodes every round; the shares together are the whole dev set)."""
    from fedtt_flwr.methods import get_method

    return method not in HETERO and get_method(method).personal


def cells(seeds: tuple[int, ...] = (0, 1, 2)) -> list[tuple[str, str, int]]:
    """Seed by seed: the newly added methods and their references first (FedTT, LoRA, FedEx-LoRA, FLoRA, the
    heterogeneous block), then the rest of the registry."""
    first = ("fedtt", "lora", "fedex-lora", "flora", *HETERO)
    order = [*first, *(m for m in methods() if m not in first)]
    return [(task, method, seed) for seed in seeds for method in order for task in TASKS]


def key(task: str, method: str, seed: int) -> str:
    return f"{task}-{method.replace('+', 'plus')}-s{seed}"


def run_cell(task: str, method: str, seed: int) -> dict:
    from fedtt_flwr.data import default_data_dir
    from fedtt_flwr.tasks import PRESETS

    name = key(task, method, seed)
    variant = HETERO.get(method, {"method": method})
    cfg = {**COMMON, **variant, "task": task, "seed": seed, "max-length": MAX_LENGTH[task], "run-name": name,
           "data-dir": str(default_data_dir())}
    head = {"task": task, "method": method, "seed": seed}
    from benchmarks import precision  # it imports this module

    twin = precision.OUT / f"{precision.key(method, 'float32', seed)}.json"  # the same run, if precision.py ran it
    done = json.loads(twin.read_text()) if task == precision.TASK and twin.exists() else {}
    if done and "reused" not in done and precision.settings(done["run_config"]) == precision.settings(cfg):
        return {**done, **head, "run_config": cfg, "reused": str(twin.relative_to(RESULTS.parent.parent))}
    command = f".venv/bin/python -m benchmarks.baselines --only {name}"
    if not personal(method):
        return {**head, **app_cell(cfg, CLIENTS, RUNS, PRESETS[task].metrics, command)}
    # the nodes' metrics (fed_*) under the plain names, so that the table and plot read them like the others
    cell = app_cell(cfg, CLIENTS, RUNS, tuple(f"fed_{m}" for m in PRESETS[task].metrics), command)
    plain = {f"fed_{m}": m for m in PRESETS[task].metrics}
    cell["curve"] = [{plain.get(k, k): v for k, v in p.items()} for p in cell["curve"]]
    cell["final"] = {plain[k]: v for k, v in cell["final"].items()}
    return {**head, **cell, "scored_on": "nodes"}


def majority_level(task: str) -> dict[str, float]:
    """The dev metrics of a model that answers the training majority's class to everything (no learning)."""
    import numpy as np

    from fedtt_flwr.data import default_data_dir, load_split
    from fedtt_flwr.tasks import PRESETS, compute_metrics

    majority = np.bincount(np.asarray(load_split(task, "train", default_data_dir())["label"])).argmax()
    labels = np.asarray(load_split(task, "dev", default_data_dir())["label"])
    return compute_metrics(PRESETS[task], np.full_like(labels, majority), labels)


def largest_drop(result: dict, metric: str) -> float:
    """The largest fall of the dev metric from one round to the next after round 1, in points."""
    values = [p[metric] for p in result["curve"] if p.get(metric) is not None and p["round"] >= 1]
    return 100 * max([0.0, *(a - b for a, b in itertools.pairwise(values))])


def report() -> None:
    """Per task and method: final dev metrics (mean and range over the seeds there are), the best round, the
    largest round-to-round drop, uplink and downlink MB per round (summed over the 5 sampled clients), and the MB
    each seed sent (uplink; uplink and downlink) to reach that seed's LoRA final level minus one point."""
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if not results:
        print("no finished cells yet")
        return
    from fedtt_flwr.tasks import PRESETS

    rows = ["| task | method | seeds | final dev (mean, min-max) | best round (mean) | largest drop, pts (worst seed) "
            "| up MB / round | down MB / round | MB up to LoRA's final - 1 pt (per seed) | MB up + down to it |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    lora = {(r["task"], r["seed"]): r for r in results if r["method"] == "lora"}
    trivials = {task: majority_level(task) for task in TASKS}
    for task in TASKS:
        metric, *others = PRESETS[task].metrics
        trivial = trivials[task]
        rows.append(f"| {task} | majority class, no training | - | "
                    + "; ".join(f"{m} {100 * trivial[m]:.1f}" for m in (metric, *others)) + " | | | | | | |")
        for method in methods():
            mine = sorted((r for r in results if r["task"] == task and r["method"] == method), key=lambda r: r["seed"])
            if not mine:
                continue
            finals = [100 * r["final"][metric] for r in mine if r["final"].get(metric) is not None]
            final = (f"{metric} {statistics.mean(finals):.1f} ({min(finals):.1f}-{max(finals):.1f})" if finals else "-")
            for m in others:
                vals = [100 * r["final"][m] for r in mine if r["final"].get(m) is not None]
                final += f"; {m} {statistics.mean(vals):.1f}" if vals else ""
            best = statistics.mean(100 * max(p[metric] for p in r["curve"] if p.get(metric) is not None) for r in mine)
            drop = max(largest_drop(r, metric) for r in mine)
            up = statistics.mean(statistics.mean(r["bytes_up_per_round"]) for r in mine) / 1e6
            down = statistics.mean(statistics.mean(r["bytes_down_per_round"]) for r in mine) / 1e6
            ref = [lora.get((task, r["seed"])) for r in mine]
            to_level = " / ".join(mb_to_level(r, x, metric) for r, x in zip(mine, ref, strict=True))
            both = " / ".join(mb_to_level(r, x, metric, down=True) for r, x in zip(mine, ref, strict=True))
            label = f"{method} (scored on the nodes)" if personal(method) else method
            rows.append(f"| {task} | {label} | {','.join(str(r['seed']) for r in mine)} | {final} | {best:.1f} | "
                        f"{drop:.1f} | {up:.3f} | {down:.3f} | {to_level} | {both} |")
    table = "\n".join(rows)
    (OUT / "table.md").write_text(table + "\n")
    _plot(results, trivials)
    publish(DOC, {"baselines": table})


def _plot(results: list[dict], trivials: dict[str, dict[str, float]]) -> None:
    """Mean dev metric over the seeds against cumulative uplink MB (the same every seed for the uniform methods;
    the mean over the seeds for FedTT+ and the heterogeneous runs, whose bytes follow the sampled clients)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedtt_flwr.tasks import PRESETS

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4))
    for ax, task in zip(axes, TASKS, strict=True):
        metric = PRESETS[task].metrics[0]
        seeds = set()
        for method in methods():
            runs = [r for r in results if r["task"] == task and r["method"] == method]
            if not runs:
                continue
            seeds.update(r["seed"] for r in runs)
            points = []
            for i in range(min(len(r["curve"]) for r in runs)):  # rounds every seed evaluated (nodes: from round 1)
                at = [r["curve"][i] for r in runs if r["curve"][i].get(metric) is not None]
                if len(at) == len(runs):
                    points.append((statistics.mean(p["mb_up"] for p in at), statistics.mean(p[metric] for p in at)))
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=f"{method} ({len(runs)})")
        ax.axhline(trivials[task][metric], color="grey", lw=0.8, ls=":", label="majority class")
        mb_axis(ax, f"dev {metric}, mean over seeds",
                f"{task} (MiniLM, 10 clients, Dir(0.5), seeds {','.join(map(str, sorted(seeds)))})")
        ax.legend(fontsize=7)
    save_plot(fig, DOC.parent / "img" / "baselines.png")


def main() -> None:
    cells_main(__doc__.splitlines()[0], cells, key, OUT, run_cell, report, "baselines", "0,1,2")


if __name__ == "__main__":
    main()
