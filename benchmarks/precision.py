"""Transport precision against MB-to-target: FedTT, FedTT+ and LoRA with float32, float16, bfloat16 and int8 on the
wire (``wire-precision``); SST-2, MiniLM, 10 clients with Dirichlet(0.5) label skew, 5 per round, 3 seeds.

The settings are benchmarks/baselines.py's (the app's defaults, 10 rounds of 10 local steps of 16), so a float32
FedTT or LoRA cell that benchmark already ran with the same run config is reused, not rerun. int8 uses the
default block of 128 values per scale and error feedback (``wire-feedback``). One JSON per finished cell in
benchmarks/results/precision/ (a rerun resumes); ``--report`` writes the table (final accuracy, uplink MB per
round, MB to 0.80 dev accuracy, the ratios to float32 and FedTT/LoRA at equal precision) and the plot into
docs/results.md between its ``precision`` markers.

    HF_HUB_OFFLINE=1 nohup .venv/bin/python -m benchmarks.precision > precision.log 2>&1 &
    .venv/bin/python -m benchmarks.precision --list
    .venv/bin/python -m benchmarks.precision --report
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks import baselines
from benchmarks._common import RESULTS, app_cell, cells_main, mb_axis, publish, save_plot

OUT = RESULTS / "precision"
DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"
RUNS = RESULTS.parent / "out" / "precision"
TASK, TARGET = "sst2", 0.80
METHODS = ("fedtt", "lora", "fedtt+")
PRECISIONS = ("float32", "float16", "bfloat16", "int8")


def cells(seeds: tuple[int, ...] = (0, 1, 2)) -> list[tuple[str, str, int]]:
    """Seed by seed: FedTT and LoRA at every precision (float32 first, usually reused), then FedTT+."""
    return [(method, precision, seed) for seed in seeds for method in METHODS for precision in PRECISIONS]


def key(method: str, precision: str, seed: int) -> str:
    return f"{TASK}-{method.replace('+', 'plus')}-{precision}-s{seed}"


def run_cell(method: str, precision: str, seed: int) -> dict:
    from fedtt_flwr.data import default_data_dir
    from fedtt_flwr.tasks import PRESETS

    name = key(method, precision, seed)
    cfg = {**baselines.COMMON, "method": method, "task": TASK, "seed": seed, "max-length": baselines.MAX_LENGTH[TASK],
           "run-name": name, "data-dir": str(default_data_dir())}
    if precision != "float32":
        cfg["wire-precision"] = precision
    head = {"task": TASK, "method": method, "precision": precision, "seed": seed}
    same = baselines.OUT / f"{baselines.key(TASK, method, seed)}.json"
    if precision == "float32" and same.exists():
        done = json.loads(same.read_text())
        if settings(done["run_config"]) == settings(cfg):
            return {**done, **head, "run_config": cfg, "reused": str(same.relative_to(RESULTS.parent.parent))}
    return {**head, **app_cell(cfg, baselines.CLIENTS, RUNS, PRESETS[TASK].metrics,
                               f".venv/bin/python -m benchmarks.precision --only {name}")}


def settings(cfg: dict) -> dict:
    """What decides a run's numbers: its run config without where it is written."""
    return {k: v for k, v in cfg.items() if k not in ("run-name", "output-dir")}


def mb_to(result: dict, level: float) -> float | None:
    return next((p["mb_up"] for p in result["curve"] if p.get("accuracy", -1) >= level), None)


def report() -> None:
    """Per method and precision: seeds, final accuracy (mean, range), uplink MB per round (5 clients), MB to 0.80 per
    seed, and two ratios of the MB to 0.80, summed over the seeds where both sides reached it (their number in
    brackets): float32's / this precision's (same method), LoRA's / this method's (same precision)."""
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if not results:
        print("no finished cells yet")
        return
    cell = {(r["method"], r["precision"], r["seed"]): r for r in results}

    def hits(method: str, precision: str) -> dict[int, float]:
        """seed -> MB to the target, for the seeds that reached it."""
        out = {seed: mb_to(r, TARGET) for (m, p, seed), r in cell.items() if (m, p) == (method, precision)}
        return {seed: mb for seed, mb in out.items() if mb is not None}

    def ratio(top: tuple[str, str], bottom: tuple[str, str]) -> str:
        """mean MB of ``top`` / mean MB of ``bottom`` over the seeds where both reached the target."""
        a, b = hits(*top), hits(*bottom)
        seeds = sorted(set(a) & set(b))
        if not seeds:
            return "-"
        return f"{sum(a[s] for s in seeds) / sum(b[s] for s in seeds):.2f}x ({len(seeds)})"

    rows = [f"| method | wire | seeds | final accuracy (mean, min-max) | up MB / round | MB to {TARGET:.2f} (per seed) "
            "| float32 MB / this MB | LoRA MB / FedTT MB |", "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for precision in PRECISIONS:
            mine = sorted((r for (m, p, _), r in cell.items() if (m, p) == (method, precision)),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            finals = [100 * r["final"]["accuracy"] for r in mine]
            up = statistics.mean(statistics.mean(r["bytes_up_per_round"]) for r in mine) / 1e6
            reached = ["not reached" if (h := mb_to(r, TARGET)) is None else f"{h:.2f}" for r in mine]
            fewer = ratio((method, "float32"), (method, precision))
            versus = ratio(("lora", precision), (method, precision)) if method != "lora" else "-"
            rows.append(f"| {method} | {precision} | {','.join(str(r['seed']) for r in mine)} | "
                        f"{statistics.mean(finals):.1f} ({min(finals):.1f}-{max(finals):.1f}) | {up:.3f} | "
                        f"{' / '.join(reached)} | {fewer} | {versus} |")
    table = "\n".join(rows)
    (OUT / "table.md").write_text(table + "\n")
    _plot(results)
    publish(DOC, {"precision": table})


def _plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"float32": "-", "float16": "--", "bfloat16": "-.", "int8": ":"}
    colours = {"fedtt": "C0", "lora": "C1", "fedtt+": "C2"}
    for r in sorted(results, key=lambda r: (r["method"], PRECISIONS.index(r["precision"]))):
        if r["seed"] != 0:
            continue
        pts = [(p["mb_up"], p["accuracy"]) for p in r["curve"] if "accuracy" in p]
        ax.plot(*zip(*pts, strict=True), styles[r["precision"]], color=colours[r["method"]], marker="o", ms=2,
                label=f"{r['method']} {r['precision']}")
    ax.axhline(TARGET, color="grey", lw=0.5)
    mb_axis(ax, "dev accuracy", "SST-2, MiniLM, 10 clients Dir(0.5), seed 0: wire precision")
    ax.legend(fontsize=6, ncol=3)
    save_plot(fig, DOC.parent / "img" / "precision.png")


def main() -> None:
    cells_main(__doc__.splitlines()[0], cells, key, OUT, run_cell, report, "precision", "0,1,2")


if __name__ == "__main__":
    main()
