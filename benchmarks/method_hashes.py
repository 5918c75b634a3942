"""Refactoring guard: the final global adapters of a 2-round in-process run of every method, as sha256 hashes.

A tiny random BERT and tiny SST-2-style data (the test suite's), fixed seeds, 3 in-process nodes. Run it before
and after a change that must not change behaviour and compare: the same hashes mean the same numbers, bit for bit.

    .venv/bin/python -m benchmarks.method_hashes [--out benchmarks/results/method_hashes.json] [--check FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from fedtt_flwr.inprocess import run_inprocess
from tests.conftest import save_tiny_bert, save_tiny_sst2

METHODS = ("fedtt", "fedtt+", "lora", "ffa-lora", "rolora", "adapter")


def adapter_hash(path: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (independent of file layout)."""
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for name, value in sorted(load_file(str(path)).items()):
        digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def run_all(work: Path) -> dict[str, str]:
    model, data = save_tiny_bert(work / "model"), save_tiny_sst2(work / "data")
    hashes = {}
    for method in METHODS:
        torch.set_num_threads(1)
        name = method.replace("+", "plus")
        run_inprocess({"model": str(model), "data-dir": str(data), "output-dir": str(work / "runs"),
                       "run-name": name, "method": method, "num-server-rounds": 2, "local-steps": 3,
                       "batch-size": 8, "max-length": 16, "min-clients": 3, "seed": 0}, num_nodes=3)
        hashes[method] = adapter_hash(work / "runs" / name / "adapter.safetensors")
        print(f"{method}: {hashes[method]}", flush=True)
    return hashes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the hashes here (JSON)")
    ap.add_argument("--check", type=Path, help="compare with hashes written earlier; exit 1 on a difference")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedtt-hashes-") as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        (work / "data").mkdir()
        hashes = run_all(work)
    if args.out:
        args.out.write_text(json.dumps({"hashes": hashes, "command": "benchmarks/method_hashes.py"}, indent=2) + "\n")
    if args.check:
        before = json.loads(args.check.read_text())["hashes"]
        changed = sorted(m for m in set(before) | set(hashes) if before.get(m) != hashes.get(m))
        print("same hashes" if not changed else f"changed: {changed}")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
