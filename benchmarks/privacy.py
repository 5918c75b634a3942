"""Local DP that learns: MiniLM on SST-2, FedTT, FedTT+, LoRA and FFA-LoRA at epsilon 8, 3 and 1 (delta 1e-5) and
without DP, in the cross-silo setting (3 clients, all of them every round) and the cross-device one (10 clients,
5 per round); IID; seeds 0 and 1 (docs/privacy.md).

Every cell drives this project's ServerApp and ClientApp in-process (fedtt_flwr.inprocess), with the same settings
but the DP keys; one JSON per finished cell goes to benchmarks/results/privacy/ (a rerun skips finished cells, so
an interrupted grid resumes). ``--report`` writes the table and the plot (dev accuracy against epsilon) into
docs/privacy.md.

The recipe (from benchmarks/dp_probe.py; the literature's: large expected batches, few trained values):
expected batch ``BATCH`` in pieces of ``PHYSICAL`` (flat memory), ``ROUNDS`` rounds of ``STEPS`` local steps,
SGD with momentum 0.9 at ``LR`` (AdamW's per-coordinate normalisation turns the noise on the adapters, whose
share of the clipped signal is ~1 %, into full-size steps: 0.59 after 60 steps at epsilon 8 against SGD's 0.79
after 20), C = ``CLIP``. ``LR`` is 2.0, not the probe's 0.5: a client's momentum starts from zero every round, so
4 local steps realise (1 + 1.9 + 2.71 + 3.44) / 4 = 2.3 of momentum's steady 10 per step; at 0.5 FedTT cross-silo
epsilon 8 seed 0 ended at 71.7 % and still rising (results/privacy_tried/), at 2.0 at 79.9 %;
the noise planned by each client for all of its steps (dp = epsilon). The first study (10 clients, batch 128,
AdamW 3e-3: one-class predictions at every epsilon) is in results/privacy_v1/, made by this script's first
version (`git show 9fff036:benchmarks/privacy.py`).

    HF_HUB_OFFLINE=1 nohup .venv/bin/python -m benchmarks.privacy > privacy.log 2>&1 &
    .venv/bin/python -m benchmarks.privacy --only silo-fedtt-eps8-s0 --list
    .venv/bin/python -m benchmarks.privacy --report
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from benchmarks._common import RESULTS, publish, run_cells, save_plot

OUT = RESULTS / "privacy"
RUNS = RESULTS.parent / "out" / "privacy"
DOC = Path(__file__).resolve().parents[1] / "docs" / "privacy.md"
BATCH, PHYSICAL, ROUNDS, STEPS, LR, CLIP = 512, 64, 5, 4, 2.0, 1.0
BASE = {"model": "minilm", "task": "sst2", "partition": "iid", "max-length": 64, "num-server-rounds": ROUNDS,
        "local-steps": STEPS, "batch-size": BATCH, "physical-batch": PHYSICAL, "lr": LR, "optimizer": "sgd",
        "dp-max-grad-norm": CLIP, "dp-delta": 1e-5, "logit-adjust": 0.0, "eval-every": 1, "eval-batch-size": 256}
SETTINGS = {"silo": (3, 3), "device": (10, 5)}  # clients, clients per round
METHODS = ("fedtt", "fedtt+", "lora", "ffa-lora")
EPSILONS = (8.0, 3.0, 1.0, None)  # None: the same budget without DP


def cells(seeds: tuple[int, ...]) -> list[tuple[str, str, float | None, int]]:
    """Priority order: what the acceptance names first (FedTT cross-silo at 8 and 3, and without DP, every seed),
    then the cross-silo grid seed by seed, then the cross-device one."""
    first = [("silo", "fedtt", e, seed) for seed in seeds for e in (8.0, 3.0, None)]
    rest = [(s, m, e, seed) for s in SETTINGS for seed in seeds for m in METHODS for e in EPSILONS]
    return first + [c for c in rest if c not in first]


def key(setting: str, method: str, eps: float | None, seed: int) -> str:
    return f"{setting}-{method.replace('+', 'plus')}-{'nodp' if eps is None else f'eps{eps:g}'}-s{seed}"


def run_cell(setting: str, method: str, eps: float | None, seed: int) -> dict:
    from fedtt_flwr.data import default_data_dir
    from fedtt_flwr.inprocess import run_inprocess

    clients, per_round = SETTINGS[setting]
    name = key(setting, method, eps, seed)
    # the reference without DP trains with the project's non-DP default (AdamW at 3e-3): SGD at DP's lr 2.0
    # diverges without per-example clipping (results/privacy_tried/silo-fedtt-nodp-s0-sgd-lr2.json: loss 0.67 ->
    # 20.6 over 5 rounds)
    dp = ({"dp": "off", "optimizer": "auto", "lr": "auto"} if eps is None
          else {"dp": "epsilon", "dp-epsilon": eps})
    cfg = {**BASE, **dp, "method": method, "seed": seed, "fraction-train": per_round / clients,
           "min-clients": per_round, "run-name": name, "output-dir": str(RUNS), "data-dir": str(default_data_dir())}
    shutil.rmtree(RUNS / name, ignore_errors=True)
    t0 = time.perf_counter()
    run_inprocess(cfg, clients)
    lines = [json.loads(x) for x in (RUNS / name / "metrics.jsonl").read_text().splitlines()]
    dp_lines = [x for x in lines if "dp_epsilon_max" in x]
    return {"setting": setting, "method": method, "epsilon": eps, "seed": seed, "run_config": cfg,
            "final_accuracy": lines[-1]["accuracy"], **_cost(lines),
            "curve": [(x["round"], x["accuracy"]) for x in lines if x.get("accuracy") is not None],
            "epsilon_spent_max": dp_lines[-1]["dp_epsilon_max"] if dp_lines else None,
            "client_train_s_max": [x.get("client_train_s_max") for x in lines[1:]],
            "errors": sum(x.get("errors", 0) for x in lines), "wall_s": round(time.perf_counter() - t0, 1),
            "command": f".venv/bin/python -m benchmarks.privacy --only {name}"}


def _cost(lines: list[dict]) -> dict:
    """Uplink bytes per client and round, and each round's slowest client's training seconds."""
    trained = [x for x in lines[1:] if x.get("replies")]
    return {"bytes_up_per_client_round": trained[-1]["bytes_up"] // trained[-1]["replies"] if trained else None,
            "client_train_s_max": [x.get("client_train_s_max") for x in lines[1:]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="cell keys, comma-separated (e.g. silo-fedtt-eps8-s0)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells(tuple(int(s) for s in args.seeds.split(",")))
            if not args.only or key(*c) in args.only.split(",")]
    if not args.report:
        run_cells(todo, key, OUT, run_cell, "privacy", args.list, lambda r: f"accuracy {r['final_accuracy']:.4f}")
    if not args.list:
        report()


def report() -> None:
    """Final dev accuracy per setting and method against epsilon (seeds separated by /), and the plot."""
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json")) if "setting" in p.read_text()[:200]]
    if not results:
        print("no finished cells yet")
        return
    cols = list(EPSILONS)
    head = " | ".join("no DP" if e is None else f"epsilon {e:g}" for e in cols)
    rows = [f"| setting | method | {head} |", "|---|---|" + "---|" * len(cols)]
    for setting in SETTINGS:
        for method in METHODS:
            cell = []
            for e in cols:
                accs = [f"{100 * r['final_accuracy']:.1f}" for r in sorted(results, key=lambda r: r["seed"])
                        if (r["setting"], r["method"], r["epsilon"]) == (setting, method, e)]
                cell.append(" / ".join(accs) or "-")
            if any(c != "-" for c in cell):
                rows.append(f"| {setting} | {method} | " + " | ".join(cell) + " |")
    table = "\n".join(rows)
    cost = ["| setting | method | uplink per client and round | slowest client's local training per round, DP "
            "(median over rounds and cells) | the same without DP |", "|---|---|---|---|---|"]
    for setting in SETTINGS:
        for method in METHODS:
            mine = [r for r in results if (r["setting"], r["method"]) == (setting, method)]
            if not mine:
                continue
            up = next((r["bytes_up_per_client_round"] for r in mine if r.get("bytes_up_per_client_round")), None)
            secs = [_median([s for r in mine if (r["epsilon"] is None) == nodp for s in r["client_train_s_max"]
                             if s is not None]) for nodp in (False, True)]
            cost.append(f"| {setting} | {method} | {'-' if up is None else f'{up / 1e6:.3f} MB'} | "
                        + " | ".join("-" if x is None else f"{x:.1f} s" for x in secs) + " |")
    _plot(results)
    publish(DOC, {"privacy-grid": table, "privacy-cost": "\n".join(cost)})


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _plot(results: list[dict]) -> None:
    """Accuracy against epsilon per method (mean over seeds, bars from the lowest to the highest seed), its no-DP
    reference as a dashed line of its colour; one panel per setting that has results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if any(r["setting"] == s for r in results)]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        for i, method in enumerate(METHODS):
            mine = [r for r in results if (r["setting"], r["method"]) == (setting, method)]
            eps = sorted({r["epsilon"] for r in mine} - {None})
            accs = [[100 * r["final_accuracy"] for r in mine if r["epsilon"] == e] for e in eps]
            colour = f"C{i}"
            if eps:
                means = [statistics.mean(a) for a in accs]
                spread = [[m - min(a) for m, a in zip(means, accs, strict=True)],
                          [max(a) - m for m, a in zip(means, accs, strict=True)]]
                nudge = 1 + 0.03 * (i - (len(METHODS) - 1) / 2)  # methods side by side on the log axis
                ax.errorbar([e * nudge for e in eps], means, yerr=spread, marker="o", color=colour, capsize=3,
                            label=method)
            ref = [100 * r["final_accuracy"] for r in mine if r["epsilon"] is None]
            if ref:
                ax.axhline(statistics.mean(ref), color=colour, lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xticks([e for e in EPSILONS if e is not None], [f"{e:g}" for e in EPSILONS if e is not None])
        ax.minorticks_off()
        ax.set_xlabel("epsilon (delta 1e-5); dashed: the same run without DP")
        ax.set_ylabel("SST-2 dev accuracy, % (mean; bars: seeds)")
        ax.set_title(f"{setting}: {SETTINGS[setting][0]} clients, {SETTINGS[setting][1]} per round")
        ax.legend(fontsize=7)
    save_plot(fig, DOC.parent / "img" / "privacy.png")


if __name__ == "__main__":
    main()
