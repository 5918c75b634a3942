"""FedTT+ and the tensors outside the core schedule: should the LayerNorm gains travel every round?

FedTT+ freezes cores by schedule; the LayerNorm gains that ``train-layernorm = auto`` trains on MiniLM (4,992
values) and the head travel every round, so at the defaults FedTT+ sends 0.57x FedTT's uplink per round, not the
paper's ~0.45x. This compares FedTT+ at the defaults (gains every round) with FedTT+ without trained gains
(``train-layernorm = false``: 0.44x), on precision.py's setting (SST-2, MiniLM, 10 clients Dirichlet(0.5), 5 per
round, 10 rounds x 10 local steps; its float32 FedTT and FedTT+ cells are reused), seeds 0-2. One JSON per cell in
benchmarks/results/plus_norms/; ``--report`` writes the table into docs/results.md between its ``plus-norms``
markers.

    HF_HUB_OFFLINE=1 nohup .venv/bin/python -m benchmarks.plus_norms > plus_norms.log 2>&1 &
    .venv/bin/python -m benchmarks.plus_norms --report
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks import baselines, precision
from benchmarks._common import RESULTS, app_cell, cells_main, publish

OUT = RESULTS / "plus_norms"
RUNS = RESULTS.parent / "out" / "plus_norms"
DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"
#: variant -> (method, run-config overrides); "defaults" cells come from precision.py
VARIANTS = {"fedtt": ("fedtt", {}), "fedtt+ (gains every round)": ("fedtt+", {}),
            "fedtt+ (no gains)": ("fedtt+", {"train-layernorm": False})}


def cells(seeds: tuple[int, ...] = (0, 1, 2)) -> list[tuple[str, int]]:
    return [(variant, seed) for seed in seeds for variant in VARIANTS]


def key(variant: str, seed: int) -> str:
    slug = variant.replace("+", "plus").replace(" (", "-").replace(")", "").replace(" ", "-")
    return f"{precision.TASK}-{slug}-s{seed}"


def run_cell(variant: str, seed: int) -> dict:
    from fedtt_flwr.tasks import PRESETS

    method, overrides = VARIANTS[variant]
    if not overrides:  # the precision benchmark's float32 cell (run there if missing)
        path = precision.OUT / f"{precision.key(method, 'float32', seed)}.json"
        if not path.exists():  # run as precision.py's cell and kept there, so that precision.py does not rerun it
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(precision.run_cell(method, "float32", seed), indent=1))
        reused = str(path.relative_to(RESULTS.parent.parent))
        return {**json.loads(path.read_text()), "variant": variant, "reused": reused}
    name = key(variant, seed)
    from fedtt_flwr.data import default_data_dir

    cfg = {**baselines.COMMON, "method": method, "task": precision.TASK, "seed": seed, **overrides,
           "max-length": baselines.MAX_LENGTH[precision.TASK], "run-name": name, "data-dir": str(default_data_dir())}
    return {"variant": variant, "seed": seed,
            **app_cell(cfg, baselines.CLIENTS, RUNS, PRESETS[precision.TASK].metrics,
                       f".venv/bin/python -m benchmarks.plus_norms --only {name}")}


def report() -> None:
    """Per variant: seeds, final accuracy, uplink per round and its ratio to FedTT's, MB to 0.80 per seed."""
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if not results:
        print("no finished cells yet")
        return
    up = {v: statistics.mean(statistics.mean(r["bytes_up_per_round"]) for r in results if r["variant"] == v)
          for v in VARIANTS if any(r["variant"] == v for r in results)}
    rows = ["| variant | seeds | final accuracy (mean, min-max) | up MB / round (5 clients) | / FedTT's | "
            f"MB to {precision.TARGET:.2f} (per seed) | best accuracy (mean) |", "|---" * 7 + "|"]
    for variant in up:
        mine = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        finals = [100 * r["final"]["accuracy"] for r in mine]
        best = [100 * max(p["accuracy"] for p in r["curve"] if "accuracy" in p) for r in mine]
        reached = ["not reached" if (h := precision.mb_to(r, precision.TARGET)) is None else f"{h:.2f}" for r in mine]
        ratio = f"{up[variant] / up['fedtt']:.3f}" if "fedtt" in up else "-"
        rows.append(f"| {variant} | {','.join(str(r['seed']) for r in mine)} | {statistics.mean(finals):.1f} "
                    f"({min(finals):.1f}-{max(finals):.1f}) | {up[variant] / 1e6:.3f} | {ratio} | "
                    f"{' / '.join(reached)} | {statistics.mean(best):.1f} |")
    table = "\n".join(rows)
    (OUT / "table.md").write_text(table + "\n")
    publish(DOC, {"plus-norms": table})


def main() -> None:
    cells_main(__doc__.splitlines()[0], cells, key, OUT, run_cell, report, "plus-norms", "0,1,2")


if __name__ == "__main__":
    main()
