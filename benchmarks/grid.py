"""The comparison grid: methods x tasks x heterogeneity x clients, accuracy against bytes.

Every federated cell runs this project's ServerApp and ClientApp in-process (fedtt_flwr.inprocess:
the same code `flwr run` runs, without Ray's per-message overhead on 2 cores). One JSON per finished
cell goes to benchmarks/results/grid/; a rerun skips finished cells, so an interrupted grid resumes.
`--report` (also run after every cell) writes the markdown tables and the PNG plots from those files.
`--check-flwr` runs one small cell per method both through `flwr run` and in-process and compares.

    .venv/bin/python -m benchmarks.grid                   # the whole grid, in priority order
    .venv/bin/python -m benchmarks.grid --only task=sst2,seed=0 --list
    .venv/bin/python -m benchmarks.grid --report
    .venv/bin/python -m benchmarks.grid --check-flwr
    .venv/bin/python -m benchmarks.grid --only key=sst2-device-dir1-fedtt-s0 --set lr=1e-3   # a variant
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks._common import RESULTS, publish
from fedtt_flwr.data import default_data_dir, get_task
from fedtt_flwr.methods import all_methods

GRID = RESULTS / "grid"
RUNS = RESULTS.parent / "out" / "grid"
VARIANTS = RESULTS / "grid_variants"  # cells re-run with run-config overrides (--set): probes, not the grid
VARIANT_RUNS = RESULTS.parent / "out" / "grid_variants"
#: every registered method the grid can score by the central dev metric (a personalised method has none): the
#: study's six in the order of its tables, then any method registered since
_STUDY = ("fedtt", "fedtt+", "lora", "ffa-lora", "rolora", "adapter")
METHODS = (*_STUDY, *(m.name for m in all_methods() if not m.personal and m.name not in _STUDY))
SILO_METHODS = ("fedtt", "fedtt+", "lora")
CENTRAL_METHODS = ("fedtt", "lora")
TASKS = ("sst2", "rte", "mrpc")
HETEROGENEITY = (("iid", 0.0), ("dirichlet", 1.0), ("dirichlet", 0.1))
#: what every federated cell shares (chosen so one cell takes a few minutes on 2 CPU cores)
#: pack-arrays stays off here: the grid's byte columns were measured unpacked (the packed sizes: docs/results.md
#: "sizes"; accuracy does not depend on it, aggregation is bit-identical)
#: pinned, not left to the app's defaults, so that cells run after a default changes stay comparable
COMMON = {"model": "minilm", "num-server-rounds": 10, "local-steps": 10, "batch-size": 16, "max-length": 64,
          "lr": 3e-3, "eval-every": 2, "server-opt": "fedavg", "pack-arrays": False, "adapter-init": "loretta",
          "train-layernorm": False, "logit-adjust": 0.0, "pooling": "cls", "lr-schedule": "constant"}
SETTINGS = {  # clients, clients per round
    "device": (10, 5),
    "silo": (3, 3),
}


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    setting: str  # device | silo | central
    partition: str = "iid"
    alpha: float = 0.0
    seed: int = 0

    @property
    def key(self) -> str:
        het = "iid" if self.partition == "iid" else f"dir{self.alpha:g}"
        if self.setting == "central":
            het = "all"
        return f"{self.task}-{self.setting}-{het}-{self.method.replace('+', 'plus')}-s{self.seed}"

    @property
    def heterogeneity(self) -> str:
        return {"iid": "IID"}.get(self.partition, f"Dir({self.alpha:g})") if self.setting != "central" else "-"

    def run_config(self) -> dict:
        clients, per_round = SETTINGS[self.setting]
        cfg = {**COMMON, "task": self.task, "method": self.method, "seed": self.seed, "partition": self.partition,
               "fraction-train": per_round / clients, "min-clients": per_round, "run-name": self.key,
               "output-dir": str(RUNS), "data-dir": str(default_data_dir())}
        if self.partition == "dirichlet":
            cfg["alpha"] = self.alpha
        return cfg


def grid_cells() -> list[Cell]:
    """The grid in priority order: per task, the cross-device block, the cross-silo block at alpha 0.1 and
    the centralized references; then the second SST-2 seed."""
    cells = []
    for task in TASKS:
        cells += [Cell(task, m, "device", p, a) for p, a in HETEROGENEITY for m in METHODS]
        cells += [Cell(task, m, "silo", "dirichlet", 0.1) for m in SILO_METHODS]
        cells += [Cell(task, m, "central") for m in CENTRAL_METHODS]
    cells += [Cell("sst2", m, "device", p, a, seed=1) for p, a in HETEROGENEITY for m in METHODS]
    cells += [Cell("sst2", m, "silo", "dirichlet", 0.1, seed=1) for m in SILO_METHODS]
    cells += [Cell("sst2", m, "central", seed=1) for m in CENTRAL_METHODS]
    return cells


def central_steps() -> int:
    """As many optimizer steps (of the same batch size) as all clients of one cross-device run take."""
    clients, per_round = SETTINGS["device"]
    return COMMON["num-server-rounds"] * per_round * COMMON["local-steps"]


def variant_name(cell: Cell, overrides: dict) -> str:
    return cell.key + "".join(f"__{k}={v}" for k, v in sorted(overrides.items()))


def run_federated(cell: Cell, overrides: dict | None = None, *, runs: Path | None = None, name: str = "",
                  command: str = "") -> dict:
    """Run one cell (with run-config ``overrides``: a variant) and collect its result."""
    from fedtt_flwr.inprocess import run_inprocess

    name = name or variant_name(cell, overrides or {})
    runs = runs or (RUNS if not overrides else VARIANT_RUNS)
    cfg = {**cell.run_config(), **(overrides or {}), "run-name": name, "output-dir": str(runs)}
    shutil.rmtree(runs / name, ignore_errors=True)  # a cell interrupted earlier starts over: metrics.jsonl appends
    t0 = time.perf_counter()
    run_inprocess(cfg, SETTINGS[cell.setting][0])
    sets = "".join(f" --set {k}={v}" for k, v in sorted((overrides or {}).items()))
    return collect(cell, cfg, runs / name, time.perf_counter() - t0,
                   command or f".venv/bin/python -m benchmarks.grid --only key={cell.key}{sets}")


def collect(cell: Cell, cfg: dict, folder: Path, wall: float, command: str) -> dict:
    """A cell's result from its run folder: bytes per round, the dev curve, the final metrics."""
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((folder / "config.json").read_text())
    metrics = get_task(cell.task).metrics
    return {
        "cell": asdict(cell), "run_config": cfg, "clients": SETTINGS[cell.setting][0],
        "trainable_params": config["travelling_params"],
        "bytes_up_per_round": [x["bytes_up"] for x in lines[1:]],
        "bytes_down_per_round": [x["bytes_down"] for x in lines[1:]],
        "total_mb_up": lines[-1]["total_bytes_up"] / 1e6, "total_mb_down": lines[-1]["total_bytes_down"] / 1e6,
        "curve": [{"round": x["round"], "mb_up": x["total_bytes_up"] / 1e6, "mb_down": x["total_bytes_down"] / 1e6,
                   **{m: x[m] for m in metrics if m in x}} for x in lines if metrics[0] in x],
        "final": {m: lines[-1].get(m) for m in metrics},
        "wall_s": round(wall, 1),
        "command": command,
    }


def run_central(cell: Cell) -> dict:
    from fedtt_flwr.centralized import FinetuneConfig, finetune
    from fedtt_flwr.data import load_split

    train_size = len(load_split(cell.task, "train", str(default_data_dir())))
    batches = math.ceil(train_size / COMMON["batch-size"])
    cfg = FinetuneConfig(model=COMMON["model"], task=cell.task, method=cell.method, data_dir=str(default_data_dir()),
                         train_size=train_size, epochs=central_steps() / batches, max_length=COMMON["max-length"],
                         batch_size=COMMON["batch-size"], lr=COMMON["lr"], seed=cell.seed, output_dir=str(RUNS),
                         train_layernorm=COMMON["train-layernorm"])
    t0 = time.perf_counter()
    result = finetune(cfg)
    return {"cell": asdict(cell), "finetune_config": cfg.model_dump(), "steps": result["steps"],
            "trainable_params": result["params"]["travelling"],
            "final": {m: result["dev"].get(m) for m in get_task(cell.task).metrics},
            "wall_s": round(time.perf_counter() - t0, 1),
            "command": f".venv/bin/python -m benchmarks.grid --only key={cell.key}"}


def matches(cell: Cell, only: str) -> bool:
    if not only:
        return True
    fields = {**{k: str(v) for k, v in asdict(cell).items()}, "key": cell.key}
    for cond in only.split(","):
        k, _, v = cond.partition("=")
        if k not in fields:
            raise SystemExit(f"--only: unknown field {k!r}; fields: {', '.join(fields)}")
        if not any(fields[k] == alt or (k == "alpha" and float(fields[k]) == float(alt)) for alt in v.split("|")):
            return False
    return True


def load_results() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(GRID.glob("*.json"))}


# ---------------------------------------------------------------- report


def _mean_spread(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * (max(values) - min(values)) / 2:.1f}"


def _metrics_cell(finals: list[dict], metrics: tuple[str, ...]) -> str:
    """The main metric (mean ± half range over seeds), the others in parentheses: MRPC's F1 alone hides
    one-class predictions (all-positive scores F1 81.2)."""
    if not finals:
        return ""
    main, *rest = (_mean_spread([f[m] for f in finals]) for m in metrics)
    return main + (f" ({', '.join(rest)})" if rest else "")


def majority_class(task: str) -> dict[str, float]:
    """Dev metrics of always predicting the most frequent dev label: the level that says nothing was learnt."""
    import numpy as np

    from fedtt_flwr.data import compute_metrics, load_split

    labels = np.asarray(load_split(task, "dev", default_data_dir())["label"])
    return compute_metrics(task, np.full_like(labels, np.bincount(labels).argmax()), labels)


#: (metric, level) pairs for the MB-to-level table: the convergence-per-byte targets and a lower level; MRPC by
#: accuracy and a high F1, since the all-positive predictor already scores F1 0.812
TARGETS = {"sst2": (("accuracy", 0.70), ("accuracy", 0.80)), "rte": (("accuracy", 0.55), ("accuracy", 0.60)),
           "mrpc": (("accuracy", 0.75), ("f1", 0.85))}
FED_COLUMNS = (("device", "iid", 0.0, "10 clients IID"), ("device", "dirichlet", 1.0, "10 clients Dir(1.0)"),
               ("device", "dirichlet", 0.1, "10 clients Dir(0.1)"), ("silo", "dirichlet", 0.1, "3 clients Dir(0.1)"))


def _column(result: dict) -> tuple[str, str, float]:
    c = result["cell"]
    return c["setting"], c["partition"], c["alpha"]


def mb_to_target(curve: list[dict], metric: str, target: float) -> tuple[float, int] | None:
    """(cumulative MB up, round) at the first evaluation whose metric reaches ``target``; None if none did."""
    for point in curve:
        if point.get(metric) is not None and point[metric] >= target:
            return point["mb_up"], point["round"]
    return None


def target_tables(results: dict[str, dict]) -> str:
    """Per task and target: uplink MB (all clients) until the dev metric first reaches the target."""
    out = []
    for task in TASKS:
        runs = [r for r in results.values() if r["cell"]["task"] == task and "curve" in r]
        if not runs:
            continue
        for main, target in TARGETS[task]:
            out.append(f"\n#### {task.upper()}: MB up until dev {main} >= {target:g} (round); - = not reached "
                       "in 10 rounds; seeds separated by /\n")
            out.append("| method | " + " | ".join(c[3] for c in FED_COLUMNS) + " |")
            out.append("|---" * (1 + len(FED_COLUMNS)) + "|")
            for m in METHODS:
                cells = []
                for setting, part, alpha, _ in FED_COLUMNS:
                    mine = sorted((r for r in runs if r["cell"]["method"] == m
                                   and _column(r) == (setting, part, alpha)), key=lambda r: r["cell"]["seed"])
                    hits = [mb_to_target(r["curve"], main, target) for r in mine]
                    cells.append(" / ".join(f"{h[0]:.2f} (r{h[1]})" if h else "-" for h in hits))
                if any(cells):
                    out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def tables(results: dict[str, dict]) -> str:
    """One table per task: a row per method; columns: trainable params, uplink per client and round,
    total MB up of the run, and the final dev metric (mean ± half range over seeds) per setting."""
    columns = [c[:3] for c in FED_COLUMNS] + [("central", "iid", 0.0)]
    names = [c[3] for c in FED_COLUMNS] + ["centralized"]
    out = []
    for task in TASKS:
        rows = {}
        for r in results.values():
            c = Cell(**r["cell"])
            if c.task != task:
                continue
            row = rows.setdefault(c.method, {"cols": {}, "params": None, "up": None, "mb": None})
            row["cols"].setdefault((c.setting, c.partition, c.alpha), []).append(r["final"])
            if c.setting == "device" and c.partition == "iid" and c.seed == 0:
                ups = r["bytes_up_per_round"]
                clients = SETTINGS["device"][1]
                row["up"] = statistics.mean(ups) / clients
                row["mb"] = r["total_mb_up"]
            if c.setting != "central":
                row["params"] = r["trainable_params"]
        if not rows:
            continue
        metrics = get_task(task).metrics
        base = majority_class(task)
        shown = metrics[0] + (f" ({', '.join(metrics[1:])})" if metrics[1:] else "")
        out.append(f"\n### {task.upper()} (dev {shown}, %; final round; majority class: "
                   f"{_metrics_cell([base], metrics)})\n")
        out.append("| method | trainable params | bytes up / client / round | MB up, 10-client run | "
                   + " | ".join(names) + " |")
        out.append("|---" * (4 + len(names)) + "|")
        for m in [*METHODS]:
            if m not in rows:
                continue
            row = rows[m]
            fixed = [f"{row['params']:,}" if row["params"] else "", f"{round(row['up']):,}" if row["up"] else "",
                     f"{row['mb']:.2f}" if row["mb"] is not None else ""]
            cells = [_metrics_cell(row["cols"].get(col, []), metrics) for col in columns]
            out.append("| " + " | ".join([m, *fixed, *cells]) + " |")
    return "\n".join(out)


def plots(results: dict[str, dict]) -> list[Path]:
    """Per task: dev metric against round and against cumulative MB up, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = FED_COLUMNS
    colors = {m: f"C{i % 10}" for i, m in enumerate(METHODS)}
    written = []
    for task in TASKS:
        mine = sorted((r for r in results.values() if r["cell"]["task"] == task and "curve" in r),
                      key=lambda r: (METHODS.index(r["cell"]["method"]), r["cell"]["seed"]))
        if not mine:
            continue
        main = get_task(task).metrics[0]
        fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
        for j, (setting, part, alpha, title) in enumerate(panels):
            for r in mine:
                c = Cell(**r["cell"])
                if (c.setting, c.partition, c.alpha) != (setting, part, alpha):
                    continue
                xs_round = [p["round"] for p in r["curve"]]
                xs_mb = [p["mb_up"] for p in r["curve"]]
                ys = [p[main] for p in r["curve"]]
                style = dict(color=colors[c.method], ls="-" if c.seed == 0 else "--", marker=".",
                             label=c.method if c.seed == 0 else None)
                axes[0][j].plot(xs_round, ys, **style)
                axes[1][j].plot(xs_mb, ys, **style)
            axes[0][j].set_title(title)
            axes[0][j].set_xlabel("round")
            axes[1][j].set_xlabel("cumulative MB up (all clients)")
            axes[1][j].set_xscale("symlog", linthresh=0.1)
            axes[1][j].set_xlim(left=0)
            for i in range(2):
                axes[i][j].set_ylabel(f"dev {main}")
                axes[i][j].grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"MiniLM on {task.upper()}: dev {main} (solid: seed 0, dashed: seed 1)")
        written.append(save_figure(fig, GRID / f"{task}.png"))
    return written


def save_figure(fig, path: Path) -> Path:
    """The benchmarks' PNGs: tight layout, 90 dpi, figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def shape_table() -> str:
    """Parameter and byte columns at the sizes the method was made for (configs only, no weights);
    LLaMA as a causal LM (its LM head stays frozen and never travels)."""
    from fedtt_flwr.report import param_report

    out = ["| model | method | trainable params | bytes up / client / round | lora / method |", "|---|---|---|---|---|"]
    for model in ("minilm", "roberta-base", "roberta-large", "llama-2-7b"):
        report = param_report(model, task_kind="causal-lm" if model.startswith("llama") else "classification")
        rows = report["methods"]
        for m, row in rows.items():
            ratio = rows["lora"]["bytes_up_per_round"] / row["bytes_up_per_round"]
            out.append(f"| {model} | {m} | {row['trainable_params']:,} | {row['bytes_up_per_round']:,} | {ratio:.2f} |")
    return "\n".join(out)


DOC = RESULTS.parents[1] / "docs" / "results.md"
CHECK = RESULTS / "grid_flwr_check.json"


def check_table() -> str:
    """The `flwr run` vs in-process comparison, one row per method."""
    if not CHECK.exists():
        return "*Not run yet: `.venv/bin/python -m benchmarks.grid --check-flwr`.*"
    rows = ["| method | rounds | max abs diff, dev loss | max abs diff, dev accuracy | bytes per round equal | "
            "wall, flwr run | wall, in-process |", "|---|---|---|---|---|---|---|"]
    for m, r in json.loads(CHECK.read_text()).items():
        rows.append(f"| {m} | {len(r['flwr']['loss']) - 1} | {r['max_abs_loss_diff']:.2e} | "
                    f"{r['max_abs_accuracy_diff']:.4f} | {'yes' if r['bytes_equal'] else 'NO'} | "
                    f"{r['flwr']['wall_s']:.0f} s | {r['inprocess']['wall_s']:.0f} s |")
    cfg = next(iter(json.loads(CHECK.read_text()).values()))["config"]
    keep = ("task", "num-server-rounds", "local-steps", "partition", "alpha", "seed")
    return ("Command: `.venv/bin/python -m benchmarks.grid --check-flwr`; 4 clients, all in every round, "
            + ", ".join(f"`{k}={cfg[k]}`" for k in keep) + "; dev metrics after every round.\n\n" + "\n".join(rows))


def report(results: dict[str, dict], with_shapes: bool = False) -> Path:
    """summary.md and the plots under results/grid/, and the generated blocks of docs/results.md."""
    GRID.mkdir(parents=True, exist_ok=True)
    plots(results)
    path = GRID / "summary.md"
    status = f"{len(results)} of {len(grid_cells())} grid cells finished"
    table = tables(results) + "\n\n### Uplink MB to reach a dev-metric level\n" + target_tables(results)
    path.write_text(f"# Grid summary ({status})\n\nCommon settings: `{json.dumps(COMMON)}`; cross-device: "
                    f"10 clients, 5 per round; cross-silo: 3 clients, all per round; centralized: "
                    f"{central_steps()} steps.\n" + table + "\n")
    blocks = {"grid": f"*Generated by `benchmarks/grid.py --report`: {status}.*\n" + table, "check": check_table()}
    if with_shapes:
        blocks["shapes"] = shape_table()
    publish(DOC, blocks, echo=False)
    return path


# ---------------------------------------------------------------- flwr run agreement


def check_flwr(methods: list[str]) -> None:
    """For each method: the same small run (4 clients, all per round, 3 rounds) through `flwr run` and
    in-process; writes the per-round metric and loss of both to results/grid_flwr_check.json."""
    from fedtt_flwr.inprocess import run_inprocess
    from fedtt_flwr.launch import simulate

    out_path = CHECK
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    runs = RESULTS.parent / "out" / "grid_flwr_check"
    for method in methods:
        if method in results:
            print(f"skip {method}: done")
            continue
        base = {**COMMON, "num-server-rounds": 3, "local-steps": 5, "eval-every": 1, "task": "sst2",
                "method": method, "partition": "dirichlet", "alpha": 1.0, "min-clients": 4, "seed": 0,
                "output-dir": str(runs), "data-dir": str(default_data_dir())}
        curves = {}
        for mode in ("flwr", "inprocess"):
            name = f"{method.replace('+', 'plus')}-{mode}"
            shutil.rmtree(runs / name, ignore_errors=True)
            t0 = time.perf_counter()
            if mode == "flwr":
                code = simulate(num_supernodes=4, run_config={**base, "run-name": name}, stream=False)
                if code != 0:
                    raise SystemExit(f"flwr run for {method} failed (exit {code})")
            else:
                run_inprocess({**base, "run-name": name}, 4)
            lines = [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines()]
            curves[mode] = {"accuracy": [x["accuracy"] for x in lines], "loss": [x["loss"] for x in lines],
                            "bytes_up": [x["bytes_up"] for x in lines], "wall_s": round(time.perf_counter() - t0, 1)}
        f, i = curves["flwr"], curves["inprocess"]
        results[method] = {
            **curves, "config": base,
            "max_abs_loss_diff": max(abs(a - b) for a, b in zip(f["loss"], i["loss"], strict=True)),
            "max_abs_accuracy_diff": max(abs(a - b) for a, b in zip(f["accuracy"], i["accuracy"], strict=True)),
            "bytes_equal": f["bytes_up"] == i["bytes_up"],
        }
        out_path.write_text(json.dumps(results, indent=2))
        print(method, {k: v for k, v in results[method].items() if k.startswith(("max", "bytes"))}, flush=True)


def run_variants(cells: list[Cell], only: str, sets: list[str]) -> None:
    from fedtt_flwr.cli import parse_overrides
    from fedtt_flwr.config import RunConfig

    overrides = parse_overrides(sets)
    RunConfig.from_flower({**cells[0].run_config(), **overrides})  # a bad key stops here, before any run
    VARIANTS.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        if cell.setting == "central" or not matches(cell, only):
            continue
        path = VARIANTS / f"{variant_name(cell, overrides)}.json"
        if path.exists():
            print(f"skip {path.name}: done")
            continue
        result = run_federated(cell, overrides)
        path.write_text(json.dumps(result, indent=1))
        print(f"[grid] {path.stem}: final {result['final']} in {result['wall_s']} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="filter cells, e.g. task=sst2,seed=0 or method=lora|adapter "
                                               "or key=sst2-device-iid-fedtt-s0")
    ap.add_argument("--list", action="store_true", help="list the selected cells and whether they are done")
    ap.add_argument("--report", action="store_true", help="only rewrite the summary table and plots")
    ap.add_argument("--check-flwr", action="store_true", help="flwr run vs in-process, one small run per method")
    ap.add_argument("--methods", default=",".join(METHODS), help="with --check-flwr")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="run the selected federated cells as variants with this run-config override (repeatable); "
                         "results go to results/grid_variants/, not into the grid's tables")
    args = ap.parse_args()
    if args.check_flwr:
        check_flwr(args.methods.split(","))
        return
    if args.set:
        run_variants(grid_cells(), args.only, args.set)
        return
    done = load_results()
    cells = [c for c in grid_cells() if matches(c, args.only)]
    if args.list:
        for c in cells:
            print(f"{'done' if c.key in done else 'todo'}  {c.key}")
        print(f"{sum(c.key in done for c in cells)} of {len(cells)} done")
        return
    if not args.report:
        GRID.mkdir(parents=True, exist_ok=True)
        for n, cell in enumerate(cells, 1):
            if cell.key in done:
                continue
            print(f"[grid] {n}/{len(cells)} {cell.key}", flush=True)
            result = run_central(cell) if cell.setting == "central" else run_federated(cell)
            (GRID / f"{cell.key}.json").write_text(json.dumps(result, indent=1))
            done[cell.key] = result
            print(f"[grid] {cell.key}: final {result['final']} in {result['wall_s']} s", flush=True)
            try:
                report(done)
            except Exception as exc:  # a report bug must not stop the grid; --report redoes it
                print(f"[grid] report failed: {type(exc).__name__}: {exc}", flush=True)
    print(report(done, with_shapes=args.report))


if __name__ == "__main__":
    main()
