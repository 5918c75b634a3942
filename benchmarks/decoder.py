"""Real decoder runs: SmolLM2-135M on RTE (and SST-2), 3 clients, FedTT, through `flwr run` (docs/decoders.md).

Each variant is one `fedtt-flwr simulate` run; a finished run (its summary.json) is not run again. Writes
benchmarks/results/decoder.json and the generated block of docs/decoders.md: the zero-shot backbone,
round 0 (adapters initialised), the final round, bytes per round and wall time.

    .venv/bin/python -m benchmarks.decoder
"""

from __future__ import annotations

import json
import shutil

from benchmarks._common import RESULTS, publish
from fedtt_flwr.data import default_data_dir

RUNS = RESULTS.parent / "out" / "decoder"
OUT = RESULTS / "decoder.json"
DOC = RESULTS.parents[1] / "docs" / "decoders.md"
CLIENTS = 3
BASE = {"model": "smollm2-135m", "num-server-rounds": 3, "local-steps": 8, "batch-size": 4,
        "max-length": 128, "eval-every": 3, "min-clients": CLIENTS, "partition": "iid"}
VARIANTS = {
    "smollm2-rte-fedtt": {"task": "rte"},
    "smollm2-rte-fedtt-nearid-lr1e-3": {"task": "rte", "adapter-init": "near-identity", "lr": 0.001},
    "smollm2-sst2-fedtt": {"task": "sst2"},
}


def command(name: str) -> str:
    sets = " ".join(f"--set {k}={v}" for k, v in {**BASE, **VARIANTS[name], "run-name": name}.items())
    return (f"fedtt-flwr simulate --num-clients {CLIENTS} {sets} --set output-dir=$PWD/benchmarks/out/decoder "
            "--set data-dir=/abs/path/to/shared/data")


def run(name: str) -> None:
    from fedtt_flwr.launch import simulate

    cfg = {**BASE, **VARIANTS[name], "run-name": name, "output-dir": str(RUNS), "data-dir": str(default_data_dir())}
    shutil.rmtree(RUNS / name, ignore_errors=True)  # an interrupted run starts over (a run folder is never shared)
    code = simulate(num_supernodes=CLIENTS, run_config=cfg, stream=False)
    if code != 0 or not (RUNS / name / "summary.json").exists():
        raise SystemExit(f"flwr run for {name} failed (exit {code}); see its log")


def collect(name: str) -> dict:
    lines = [json.loads(x) for x in (RUNS / name / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((RUNS / name / "summary.json").read_text())
    first, last = lines[0], lines[-1]
    return {"overrides": VARIANTS[name], "zero_shot": {"accuracy": first["zero_shot_accuracy"],
                                                       "loss": first["zero_shot_loss"]},
            "round0": {"accuracy": first["accuracy"], "loss": first["loss"]},
            "final": {"accuracy": last["accuracy"], "loss": last["loss"]},
            "train_loss": [x["train_loss"] for x in lines[1:]],
            "bytes_up_per_round": [x["bytes_up"] for x in lines[1:]], "wall_s": summary["wall_s"],
            "command": command(name), "settings": {**BASE, **VARIANTS[name]}}


def table(results: dict) -> str:
    rows = ["| run | settings | zero-shot (no adapters) | round 0 (adapters initialised) | after 3 rounds | "
            "train loss per round | bytes up / client / round | wall |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        fmt = lambda m: f"{100 * m['accuracy']:.1f} % (loss {m['loss']:.3f})"  # noqa: E731
        rows.append(f"| {name} | {', '.join(f'{k}={v}' for k, v in r['overrides'].items()) or 'defaults'} | "
                    f"{fmt(r['zero_shot'])} | {fmt(r['round0'])} | {fmt(r['final'])} | "
                    f"{', '.join(f'{x:.3f}' for x in r['train_loss'])} | {r['bytes_up_per_round'][0] // CLIENTS:,} | "
                    f"{r['wall_s']:.0f} s |")
    return "\n".join(rows)


def main() -> None:
    results = {}
    for name in VARIANTS:
        if not (RUNS / name / "summary.json").exists():
            run(name)
        results[name] = collect(name)
        OUT.write_text(json.dumps(results, indent=1))
    text = table(results)
    publish(DOC, {"decoder-run": text})


if __name__ == "__main__":
    main()
