"""FedTT, FedTT+ and LoRA at the paper's base size: all-mpnet-base-v2 (MPNet, RoBERTa-base's shape: 768 wide,
12 layers), 10 clients with Dirichlet(0.5) label skew, on SST-2, MRPC and STS-B.

Every cell runs this project's ServerApp and ClientApp in-process (fedtt_flwr.inprocess: the code `flwr run` runs,
without Ray's per-message cost on 2 cores). One JSON per finished cell goes to benchmarks/results/base_size/; a
rerun skips finished cells, so an interrupted run resumes. ``--report`` writes the table and the plot (dev metric
against cumulative uplink MB) into docs/results.md between its ``base-size`` markers.

The budget (chosen so that one cell takes well under an hour on 2 CPU cores): 5 of the 10 clients per round,
10 local steps of 16, 10 rounds; max-length 64 for SST-2, 128 for the sentence pairs; every method with the run
config's defaults (lr 3e-3; FedTT's head on the mean token state, near-identity cores, LayerNorm gains).

    HF_HUB_OFFLINE=1 nohup .venv/bin/python -m benchmarks.base_size > base_size.log 2>&1 &
    .venv/bin/python -m benchmarks.base_size --list
    .venv/bin/python -m benchmarks.base_size --report
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks._common import RESULTS, app_cell, cells_main, mb_axis, mb_to_level, publish, save_plot

OUT = RESULTS / "base_size"
DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"
RUNS = RESULTS.parent / "out" / "base_size"
MODEL = "mpnet-base"
TASKS = ("sst2", "mrpc", "stsb")
METHODS = ("fedtt", "lora", "fedtt+")
CLIENTS, PER_ROUND = 10, 5
COMMON = {"model": MODEL, "num-server-rounds": 10, "local-steps": 10, "batch-size": 16, "lr": 3e-3,
          "partition": "dirichlet", "alpha": 0.5, "fraction-train": PER_ROUND / CLIENTS, "min-clients": PER_ROUND,
          "eval-every": 1, "eval-batch-size": 64}
MAX_LENGTH = {"sst2": 64, "mrpc": 128, "stsb": 128}


def cells(seeds: tuple[int, ...] = (0, 1)) -> list[tuple[str, str, int]]:
    """Priority order, seed by seed: what the acceptance compares (FedTT and LoRA on SST-2 and MRPC), then the
    same pair on STS-B, then FedTT+ on all three."""
    order = [(t, m) for t in TASKS for m in ("fedtt", "lora")] + [(t, "fedtt+") for t in TASKS]
    return [(task, method, seed) for seed in seeds for task, method in order]


def key(task: str, method: str, seed: int) -> str:
    return f"{task}-{method.replace('+', 'plus')}-s{seed}"


def run_cell(task: str, method: str, seed: int) -> dict:
    from fedtt_flwr.data import default_data_dir
    from fedtt_flwr.models import install_mpnet
    from fedtt_flwr.tasks import PRESETS

    install_mpnet()  # what `flwr run`'s preflight does for this model (once, ~440 MB); in-process runs skip it
    name = key(task, method, seed)
    cfg = {**COMMON, "task": task, "method": method, "seed": seed, "max-length": MAX_LENGTH[task],
           "run-name": name, "data-dir": str(default_data_dir())}
    return {"task": task, "method": method, "seed": seed,
            **app_cell(cfg, CLIENTS, RUNS, PRESETS[task].metrics,
                       f".venv/bin/python -m benchmarks.base_size --only {name}")}


def main() -> None:
    cells_main(__doc__.splitlines()[0], cells, key, OUT, run_cell, report, "base-size", "0,1")


def report() -> None:
    """The table (final dev metric, uplink MB per round and in total, the MB to LoRA's final level minus one point)
    and the plot, from the finished cells."""
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if not results:
        print("no finished cells yet")
        return
    from fedtt_flwr.tasks import PRESETS

    rows = ["| task | method | seed | final dev | uplink MB / round (5 clients) | uplink MB total "
            "| MB to LoRA's final - 1 pt | wall |", "|---|---|---|---|---|---|---|---|"]
    lora = {(r["task"], r["seed"]): r for r in results if r["method"] == "lora"}
    for r in sorted(results, key=lambda r: (TASKS.index(r["task"]), r["seed"], METHODS.index(r["method"]))):
        main_metric = PRESETS[r["task"]].metrics[0]
        final = ", ".join(f"{m} {100 * v:.1f}" for m, v in r["final"].items() if v is not None and m != "mse")
        to_level = mb_to_level(r, lora.get((r["task"], r["seed"])), main_metric).replace("-", "")
        per_round = sum(r["bytes_up_per_round"]) / len(r["bytes_up_per_round"]) / 1e6
        rows.append(f"| {r['task']} | {r['method']} | {r['seed']} | {final} | {per_round:.3f} | "
                    f"{r['curve'][-1]['mb_up']:.2f} | {to_level} | {r['wall_s'] / 60:.0f} min |")
    table = "\n".join(rows)
    (OUT / "table.md").write_text(table + "\n")
    _plot(results)
    publish(DOC, {"base-size": table})


def _plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedtt_flwr.tasks import PRESETS

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.6))
    for ax, task in zip(axes, TASKS, strict=True):
        metric = PRESETS[task].metrics[0]
        for r in results:
            if r["task"] != task:
                continue
            pts = [(p["mb_up"], p[metric]) for p in r["curve"] if metric in p]
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=f"{r['method']} s{r['seed']}",
                    color=f"C{METHODS.index(r['method'])}", ls="-" if r["seed"] == 0 else "--")
        mb_axis(ax, f"dev {metric}", f"{task} (MPNet-base, 10 clients, Dir(0.5))")
        ax.legend(fontsize=7)
    save_plot(fig, DOC.parent / "img" / "base_size.png")


if __name__ == "__main__":
    main()
