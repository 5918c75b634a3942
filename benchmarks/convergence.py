"""Convergence per byte: uplink MB until the central dev metric first reaches a target, over seeds.

The study of docs/convergence.md: MiniLM, 10 clients (5 per round) with Dirichlet label skew, the grid's
common settings (benchmarks/grid.py) but more rounds and a dev evaluation after every round. Each run is
one JSON in benchmarks/results/convergence/ (a rerun skips finished runs); ``--set`` runs a variant (a lever),
``--report`` writes the MB-to-target table and one plot per setting.

    .venv/bin/python -m benchmarks.convergence --task sst2 --alpha 0.5 --methods fedtt,lora --seeds 0,1,2
    .venv/bin/python -m benchmarks.convergence --task sst2 --alpha 0.5 --methods fedtt --set lr=1e-3
    .venv/bin/python -m benchmarks.convergence --report
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import statistics
from pathlib import Path

from benchmarks._common import publish
from benchmarks.grid import METHODS, RESULTS, Cell, mb_to_target, run_federated, save_figure

OUT = RESULTS / "convergence"
RUNS = RESULTS.parent / "out" / "convergence"
DOC = RESULTS.parents[1] / "docs" / "convergence-log.md"  # the generated tables live in the study's log
ROUNDS = 20
#: (dev metric, level) each task must reach (issue 10); RTE: the best reachable, see the doc. MRPC by accuracy:
#: the issue's F1 0.80 is met by predicting "paraphrase" for every pair (F1 0.812, accuracy 0.684)
TARGETS = {"sst2": ("accuracy", 0.80), "mrpc": ("accuracy", 0.75), "rte": ("accuracy", 0.60)}


def run_name(cell: Cell, rounds: int, overrides: dict) -> str:
    """``<cell>-r<rounds>``, plus 8 hex digits of the overrides when there are any (the settings themselves are in
    the JSON: ``overrides`` and ``run_config``)."""
    if not overrides:
        return f"{cell.key}-r{rounds}"
    digest = hashlib.sha256(json.dumps(sorted(overrides.items())).encode()).hexdigest()[:8]
    return f"{cell.key}-r{rounds}-{digest}"


def lever(result: dict) -> str:
    """The variant part of a run's name ("default" for none): runs differing only in seed share it."""
    return "+".join(f"{k}={v}" for k, v in sorted(result["overrides"].items())) or "default"


def run(task: str, alpha: float, methods: list[str], seeds: list[int], rounds: int, overrides: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for method in methods:
            cell = Cell(task, method, "device", "dirichlet", alpha, seed)
            name = run_name(cell, rounds, overrides)
            path = OUT / f"{name}.json"
            if path.exists():
                print(f"skip {name}: done", flush=True)
                continue
            print(f"[convergence] {name}", flush=True)
            sets = "".join(f" --set {k}={v}" for k, v in sorted(overrides.items()))
            command = (f".venv/bin/python -m benchmarks.convergence --task {task} --alpha {alpha:g} --methods {method}"
                       f" --seeds {seed} --rounds {rounds}{sets}")
            result = run_federated(cell, {"num-server-rounds": rounds, "eval-every": 1, **overrides}, runs=RUNS,
                                   name=name, command=command)
            result["overrides"] = overrides
            path.write_text(json.dumps(result, indent=1))
            print(f"[convergence] {name}: final {result['final']}, to target "
                  f"{mb_to_target(result['curve'], *TARGETS[task])} "
                  f"in {result['wall_s']} s", flush=True)


def load() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]


def _ms(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format((max(values) - min(values)) / 2)}"


#: overrides that change the training budget, the loss, the head or the lr schedule of every method alike: a run
#: is compared with the LoRA runs that share them (the other overrides are FedTT's levers)
SHARED = ("local-steps", "batch-size", "max-length", "logit-adjust", "pooling", "lr-schedule")


def reference_lever(result: dict) -> str:
    """The lever of the LoRA runs a run is compared with: its budget overrides only."""
    return lever({"overrides": {k: v for k, v in result["overrides"].items() if k in SHARED}})


def groups(results: list[dict]) -> dict[tuple, list[dict]]:
    """Runs grouped by (task, alpha, rounds, method, lever): the seeds of one configuration."""
    out: dict[tuple, list[dict]] = {}
    for r in results:
        c = r["cell"]
        key = (c["task"], c["alpha"], r["run_config"]["num-server-rounds"], c["method"], lever(r))
        out.setdefault(key, []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2], METHODS.index(kv[0][3]),
                                                     kv[0][4] != "default", kv[0][4])))


def packed_mb(run: dict, rounds: int) -> float:
    """Uplink MB of ``rounds`` rounds of this run with packed messages (pack-arrays, the default)."""
    return rounds * packed_bytes_per_client(run) * run["run_config"]["min-clients"] / 1e6


def table(results: list[dict]) -> str:
    rows = ["| task | alpha | rounds | method | lever | seeds | bytes up / client / round | reached | "
            "MB up to target | MB up, packed | round | lora MB / this MB, packed | final dev | "
            "mean of last 5 rounds | final, lora |",
            "|---" * 15 + "|"]
    grouped = groups(results)

    def hits(runs: list[dict], metric: str, target: float) -> list[tuple[float, int, float]]:
        found = [(r, mb_to_target(r["curve"], metric, target)) for r in runs]
        return [(h[0], h[1], packed_mb(r, h[1])) for r, h in found if h]

    for (task, alpha, rounds, method, lev), runs in grouped.items():
        metric, target = TARGETS[task]
        reached = hits(runs, metric, target)
        per_client = statistics.mean(r["bytes_up_per_round"][0] / (r["run_config"]["min-clients"]) for r in runs)
        lora = grouped.get((task, alpha, rounds, "lora", reference_lever(runs[0])), [])
        lora_hits = hits(lora, metric, target)
        ratio = (f"{statistics.mean(h[2] for h in lora_hits) / statistics.mean(h[2] for h in reached):.2f}"
                 if reached and len(reached) == len(runs) and lora and len(lora_hits) == len(lora) else "-")
        tail = [statistics.mean(p[metric] for p in r["curve"][-5:]) for r in runs]
        rows.append(
            f"| {task} | {alpha:g} | {rounds} | {method} | {lev} | {','.join(str(r['cell']['seed']) for r in runs)} | "
            f"{round(per_client):,} | {len(reached)}/{len(runs)} | {_ms([h[0] for h in reached])} | "
            f"{_ms([h[2] for h in reached])} | {_ms([h[1] for h in reached], '{:.1f}')} | {ratio} | "
            f"{_ms([100 * r['final'][metric] for r in runs], '{:.1f}')} | {_ms([100 * x for x in tail], '{:.1f}')} | "
            f"{_ms([100 * r['final'][metric] for r in lora], '{:.1f}')} |")
    return "\n".join(rows)


#: run-config keys that change what a TT method sends
ADAPTER_KEYS = ("rank", "bottleneck", "adapter-bias", "train-layernorm")


@functools.cache
def _packed_bytes(method: str, adapter: tuple) -> int:
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.methods import resolve
    from fedtt_flwr.report import param_report

    run = RunConfig.model_validate({**dict(adapter), "method": method})
    cfg = resolve(run).adapter_config(run)
    return param_report("minilm", adapter_config=cfg)["methods_packed"][method]["bytes_up_per_round"]


def packed_bytes_per_client(run: dict) -> int:
    """Uplink bytes of one MiniLM reply of this run's method and adapter settings with pack-arrays on (the
    parameter report's ``methods_packed``). The settings come from the run config the run was given (runs
    from before ``train-layernorm`` existed sent no norms)."""
    given = {"train-layernorm": False, **run["run_config"]}
    adapter = tuple(sorted((k, given[k]) for k in ADAPTER_KEYS if k in given))
    method = run["cell"]["method"]
    if method not in ("fedtt", "fedtt+", "adapter") and given["train-layernorm"] not in (False, "auto"):
        raise ValueError(f"packed bytes of {method} with train-layernorm={given['train-layernorm']!r} are not "
                         "modelled")
    return _packed_bytes(method, adapter)


#: lower levels than the target, to compare runs that do not all reach it
LEVELS = {"sst2": tuple(("accuracy", x) for x in (0.70, 0.75, 0.78, 0.80)),
          "mrpc": (("accuracy", 0.70), ("accuracy", 0.75), ("f1", 0.85)),
          "rte": (("accuracy", 0.55), ("accuracy", 0.60))}


def level_table(results: list[dict], min_seeds: int = 3) -> str:
    """Configurations with ``min_seeds`` or more seeds: uplink MB (as run) until each level, mean over the
    seeds that reached it ("k/n" reached), and the same in rounds; shows where a target is out of reach."""
    rows = ["| task | alpha | method | lever | seeds | level | reached | MB up (mean) | round (mean) | "
            "MB up, packed messages (mean) |", "|---" * 10 + "|"]
    for (task, alpha, _, method, lev), runs in groups(results).items():
        if len(runs) < min_seeds:
            continue
        for metric, level in LEVELS[task]:
            hits = [h for h in (mb_to_target(r["curve"], metric, level) for r in runs) if h]
            mb, rnd, mb_packed = ("-",) * 3
            if hits:
                mb, rnd = _ms([h[0] for h in hits]), _ms([h[1] for h in hits], "{:.1f}")
                mb_packed = _ms([packed_mb(runs[0], h[1]) for h in hits])
            rows.append(f"| {task} | {alpha:g} | {method} | {lev} | {len(runs)} | {metric} {level:.2f} | "
                        f"{len(hits)}/{len(runs)} | {mb} | {rnd} | {mb_packed} |")
    return "\n".join(rows)


def plots(results: list[dict]) -> list[Path]:
    """One plot per setting (task, alpha, rounds, budget): dev metric against cumulative uplink MB with
    packed messages, one line per seed, for every configuration with 3 seeds or with no lever of its own
    (every configuration where none qualifies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = groups(results)
    settings = sorted({(*k[:3], reference_lever(runs[0])) for k, runs in grouped.items()})
    written = []
    for task, alpha, rounds, budget in settings:
        same = [(k, runs) for k, runs in grouped.items()
                if (*k[:3], reference_lever(runs[0])) == (task, alpha, rounds, budget)]
        shown = [(k, runs) for k, runs in same if len(runs) >= 3 or k[4] == budget] or same
        if not shown:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        metric, target = TARGETS[task]
        for i, ((_, _, _, method, _), runs) in enumerate(shown):
            own = "+".join(f"{k}={v}" for k, v in sorted(runs[0]["overrides"].items()) if k not in SHARED)
            label = f"{method}: {own}" if own else method
            for j, r in enumerate(runs):
                ax.plot([packed_mb(r, p["round"]) for p in r["curve"]], [p[metric] for p in r["curve"]],
                        color=f"C{i}", alpha=0.8, lw=1.2, label=label if j == 0 else None)
        ax.axhline(target, color="k", ls=":", lw=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("cumulative MB up (all clients), packed messages")
        ax.set_ylabel(f"dev {metric}")
        suffix = "" if budget == "default" else f", {budget}"
        ax.set_title(f"MiniLM {task.upper()}, 10 clients Dir({alpha:g}), {rounds} rounds{suffix}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        name = f"{task}-dir{alpha:g}-r{rounds}" + ("" if budget == "default" else "-" + budget.replace("+", "-"))
        written.append(save_figure(fig, OUT / f"{name}.png"))
    return written


def report() -> None:
    results = load()
    if not results:
        raise SystemExit(f"no runs in {OUT} yet")
    plots(results)
    text, levels = table(results), level_table(results)
    (OUT / "summary.md").write_text("# Convergence per byte\n\n" + text + "\n\n" + levels + "\n")
    publish(DOC, {"table": text, "levels": levels})


def main() -> None:
    from fedtt_flwr.cli import parse_overrides
    from fedtt_flwr.config import RunConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2", choices=sorted(TARGETS))
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the label skew")
    ap.add_argument("--methods", default="fedtt,fedtt+,lora")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a lever: run-config override")
    ap.add_argument("--report", action="store_true", help="only rewrite the table and plots")
    args = ap.parse_args()
    if not args.report:
        overrides = parse_overrides(args.set)
        methods = args.methods.split(",")
        for m in methods:  # a bad method or key stops here, before any run
            RunConfig.from_flower({**Cell(args.task, m, "device", "dirichlet", args.alpha).run_config(), **overrides})
        run(args.task, args.alpha, methods, [int(s) for s in args.seeds.split(",")], args.rounds, overrides)
    report()


if __name__ == "__main__":
    main()
