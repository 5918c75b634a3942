"""Federated instruction tuning of SmolLM2-135M on the demo mix: FedTT, FedTT+, LoRA r=8 and FlowerTune's LoRA,
through `flwr run` (Flower's Ray simulation engine, `fedtt-flwr simulate`).

The mix comes from `fedtt-flwr instructions` (six task families from the GLUE/SuperGLUE folder); 10 clients with
Dirichlet(0.5) over the family column, 5 per round. Every run's round 0 is the zero-shot evaluation of the base
model on the same dev rows. One JSON per finished cell goes to benchmarks/results/instruct/; a rerun skips
finished cells, so an interrupted run resumes. ``--report`` writes the table and the plot (exact match against
cumulative uplink MB) into docs/instruction-tuning.md between its ``instruct`` markers.

The budget (2 CPU cores): 10 rounds of 8 local steps of 8, max-length 128 (a step of 8 at 128 tokens takes ~2.6 s
here, at 256 ~10 s: long BoolQ passages lose their middle, the instruction and question are kept); exact match on the
first ``EVAL_EXAMPLES`` dev rows (shuffled over the families) every 2 rounds.

    HF_HUB_OFFLINE=1 nohup .venv/bin/python -m benchmarks.instruct --mix /abs/mix > instruct.log 2>&1 &
    .venv/bin/python -m benchmarks.instruct --list
    .venv/bin/python -m benchmarks.instruct --report   # --refresh: re-read the results from the run folders
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import RESULTS, mb_axis, publish, run_cells, save_plot

OUT = RESULTS / "instruct"
RUNS = RESULTS.parent / "out" / "instruct"
DOC = Path(__file__).resolve().parents[1] / "docs" / "instruction-tuning.md"
CLIENTS, PER_ROUND, EVAL_EXAMPLES = 10, 5, 120
COMMON = {"model": "smollm2-135m", "task": "custom", "task-kind": "generation", "partition": "dirichlet",
          "partition-column": "family", "alpha": 0.5, "max-length": 128, "num-server-rounds": 10,
          "local-steps": 8, "batch-size": 8, "fraction-train": PER_ROUND / CLIENTS, "min-clients": PER_ROUND,
          "eval-every": 2, "eval-examples": EVAL_EXAMPLES, "eval-batch-size": 16}
#: cell name -> the method's settings (everything else: the run config's defaults)
CELLS = {
    "fedtt": {"method": "fedtt"},
    "fedtt+": {"method": "fedtt+"},
    # the default (auto) init for generation is LoRETTA's, which moves the base model's outputs at round 0
    "fedtt-near-identity": {"method": "fedtt", "adapter-init": "near-identity"},
    "lora-r8": {"method": "lora"},
    "lora-flowertune": {"method": "lora", "lora-rank": 32, "lora-alpha": 64, "lora-dropout": 0.075},
}


#: the acceptance's four settings; other cells are variants (dashed in the plot)
MAIN = ("fedtt", "fedtt+", "lora-r8", "lora-flowertune")


def key(cell: str, seed: int) -> str:
    return f"{cell.replace('+', 'plus')}-s{seed}"


def run_cell(cell: str, seed: int, mix: Path) -> dict:
    """One `fedtt-flwr simulate` run; its metrics.jsonl is the curve."""
    name = key(cell, seed)
    cfg = {**COMMON, **CELLS[cell], "seed": seed, "train-file": str(mix / "train.jsonl"),
           "dev-file": str(mix / "dev.jsonl"), "run-name": name, "output-dir": str(RUNS)}
    shutil.rmtree(RUNS / name, ignore_errors=True)  # an interrupted cell starts over
    cmd = [sys.executable, "-m", "fedtt_flwr.cli", "simulate", "--num-clients", str(CLIENTS)]
    for k, v in cfg.items():
        cmd += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    code = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    folder = RUNS / name
    if code != 0 or not (folder / "summary.json").exists():
        raise SystemExit(f"[instruct] {name}: the run failed (exit {code}); its log is above, its folder {folder}")
    return {"cell": cell, "seed": seed, "run_config": cfg, **summarize(folder),
            "wall_s": round(time.perf_counter() - t0, 1), "command": " ".join(cmd)}


def full_dev(folder: Path) -> dict:
    """A finished run's final model and its base model (adapters off) on every dev row: the curve's 120 rows leave a
    standard error of ~4.5 points on an exact match near 60 %, every row (360) ~2.6."""
    import torch

    from fedtt_flwr.adapters import adapters_off
    from fedtt_flwr.checkpoint import load_run
    from fedtt_flwr.data import load_split
    from fedtt_flwr.methods.build import prompt_task
    from fedtt_flwr.tasks import task_of
    from fedtt_flwr.train import evaluate, make_loader, tokenize

    model, tokenizer, cfg = load_run(folder, device="cpu")
    data = tokenize(load_split(task_of(cfg), "dev"), tokenizer, cfg.max_length, prompt_task(cfg))
    loader = make_loader(data, tokenizer, cfg.eval_batch_size, shuffle=False, prompt_task=prompt_task(cfg))
    out = {"rows": len(data)}
    out["final"] = evaluate(model, loader, task_of(cfg), torch.device("cpu"))
    with adapters_off(model):
        out["base"] = evaluate(model, loader, task_of(cfg), torch.device("cpu"))
    return out


def summarize(folder: Path) -> dict:
    """A finished run's curve (exact match and perplexity against cumulative uplink MB), bytes, round 0 (the
    adapters as initialised: LoRA's are the identity, TT's LoRETTA init is not) and the base model's zero-shot."""
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "exact_match" in x]
    return {"clients": CLIENTS,
            "trainable_params": json.loads((folder / "config.json").read_text())["travelling_params"],
            "bytes_up_per_round": [x["bytes_up"] for x in lines[1:]],
            "curve": [{"round": x["round"], "mb_up": x["total_bytes_up"] / 1e6, "exact_match": x["exact_match"],
                       "perplexity": x.get("perplexity")} for x in evals],
            "final": {"exact_match": evals[-1]["exact_match"], "perplexity": evals[-1].get("perplexity")},
            "round0": {"exact_match": evals[0]["exact_match"], "perplexity": evals[0].get("perplexity")},
            "zero_shot": {"exact_match": lines[0]["zero_shot_exact_match"],
                          "perplexity": lines[0].get("zero_shot_perplexity")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix", type=Path, help="the folder `fedtt-flwr instructions --out` wrote (train.jsonl, "
                    "dev.jsonl); default: written into benchmarks/out/mix from the data folder")
    ap.add_argument("--only", default="", help="cell names, comma-separated (" + ", ".join(CELLS) + ")")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--refresh", action="store_true", help="re-read each finished cell's numbers from its run folder")
    ap.add_argument("--full-dev", action="store_true", help="evaluate each finished cell's final model (and the base "
                    "model) on every dev row")
    args = ap.parse_args()
    if args.refresh:
        for path in OUT.glob("*.json"):
            result = json.loads(path.read_text())
            path.write_text(json.dumps({**result, **summarize(RUNS / path.stem)}, indent=1))
    if args.full_dev:
        for path in sorted(OUT.glob("*.json")):
            result = json.loads(path.read_text())
            if "full_dev" not in result:
                print(f"[instruct] {path.stem}: every dev row", flush=True)
                path.write_text(json.dumps({**result, "full_dev": full_dev(RUNS / path.stem)}, indent=1))
    OUT.mkdir(parents=True, exist_ok=True)
    todo = [(c, int(s)) for s in args.seeds.split(",") for c in CELLS
            if not args.only or c in args.only.split(",")]
    if args.list:
        run_cells(todo, key, OUT, run_cell, "instruct", list_only=True)
        return
    if not (args.report or args.refresh or args.full_dev):  # those only re-read finished cells
        mix = (args.mix or _default_mix()).resolve()
        run_cells(todo, key, OUT, lambda cell, seed: run_cell(cell, seed, mix), "instruct",
                  summary=lambda r: r["final"])
    report()


def _default_mix() -> Path:
    mix = RESULTS.parent / "out" / "mix"
    if not (mix / "train.jsonl").exists():
        subprocess.run([sys.executable, "-m", "fedtt_flwr.cli", "instructions", "--out", str(mix)], check=True)
    return mix


def report() -> None:
    """The table (zero-shot and final exact match, uplink MB per round and in total, the MB to the better LoRA's
    final exact match minus one point) and the plot, from the finished cells."""
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if not results:
        print("no finished cells yet")
        return
    loras = [r for r in results if r["cell"].startswith("lora")]
    best = max((r["final"]["exact_match"] for r in loras), default=None)
    rows = [f"| method | seed | round 0 EM (adapters as initialised) | final EM ({EVAL_EXAMPLES} rows) | final "
            "perplexity | final EM, every dev row (+- s.e.) | uplink MB / round (5 clients) | uplink MB total | MB to "
            "the better LoRA's final - 1 pt | wall |", "|---" * 10 + "|"]
    for r in sorted(results, key=lambda r: (r["seed"], list(CELLS).index(r["cell"]))):
        hit = None if best is None else next((p["mb_up"] for p in r["curve"] if p["exact_match"] >= best - 0.01), None)
        to_level = "" if best is None else (f"{hit:.2f}" if hit is not None else "not reached")
        per_round = sum(r["bytes_up_per_round"]) / max(len(r["bytes_up_per_round"]), 1) / 1e6
        rows.append(f"| {r['cell']} | {r['seed']} | {100 * r['round0']['exact_match']:.1f} | "
                    f"{100 * r['final']['exact_match']:.1f} | {r['final']['perplexity']:.2f} | {_full(r)} | "
                    f"{per_round:.3f} | "
                    f"{r['curve'][-1]['mb_up']:.2f} | {to_level} | {r['wall_s'] / 60:.0f} min |")
    zero = {f"{100 * r['zero_shot']['exact_match']:.1f} % (perplexity {r['zero_shot']['perplexity']:.2f})"
            for r in results}
    base = {f"{100 * r['full_dev']['base']['exact_match']:.1f} %" for r in results if "full_dev" in r}
    table = "\n".join(rows) + (f"\n\nThe base model without adapters (zero-shot): {', '.join(sorted(zero))} on the "
                                f"first {EVAL_EXAMPLES} dev rows" + (f", {', '.join(sorted(base))} on every dev row."
                                                                     if base else "."))
    (OUT / "table.md").write_text(table + "\n")
    _plot(results)
    publish(DOC, {"instruct": table})


def _full(r: dict) -> str:
    """Exact match on every dev row with its binomial standard error, in points."""
    if "full_dev" not in r:
        return "-"
    em, n = r["full_dev"]["final"]["exact_match"], r["full_dev"]["rows"]
    return f"{100 * em:.1f} +- {100 * (em * (1 - em) / n) ** 0.5:.1f}"


def _plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in results:
        pts = [(p["mb_up"], 100 * p["exact_match"]) for p in r["curve"]]
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, ls="-" if r["cell"] in MAIN else "--",
                label=f"{r['cell']} s{r['seed']}")
    mb_axis(ax, f"dev exact match (%, first {EVAL_EXAMPLES} rows)",
            "SmolLM2-135M, instruction mix, 10 clients, Dir(0.5) over family")
    ax.legend(fontsize=7)
    save_plot(fig, DOC.parent / "img" / "instruct.png")


if __name__ == "__main__":
    main()
