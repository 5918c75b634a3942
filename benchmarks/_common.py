"""Helpers shared by the benchmark scripts: interleaved timing and result files."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved_medians(fns: dict[str, Callable[[], None]], rounds: int, reps: int, warmup: int = 2) -> dict:
    """Time each callable ``reps`` times per round, rotating the order every round so drift on a noisy
    machine hits every variant alike. Returns per-variant median seconds and all samples."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            for _ in range(reps):
                t0 = time.perf_counter()
                fns[name]()
                samples[name].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "samples_s": [round(x, 5) for x in v]} for k, v in samples.items()}


def machine() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
            platform.machine(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def replace_block(text: str, name: str, content: str) -> str:
    """Swap what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` for ``content``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + content.strip() + "\n" + end + rest.split(end, 1)[1]


def publish(doc: Path, blocks: dict[str, str], echo: bool = True) -> None:
    """Print generated tables and write each between its markers in ``doc``, so the docs carry the numbers
    of the last run and nothing typed by hand."""
    if echo:
        print("\n\n".join(blocks.values()))
    if doc.exists():
        text = doc.read_text()
        for name, content in blocks.items():
            text = replace_block(text, name, content)
        doc.write_text(text)


def run_cells(todo: list[tuple], key: Callable[..., str], out: Path, run_cell: Callable[..., dict], label: str,
              list_only: bool = False, summary: Callable[[dict], object] = lambda r: "") -> None:
    """A resumable grid: ``--list`` prints each cell's state; otherwise every cell without a JSON in ``out`` runs and
    its result is written as soon as it finishes, so an interrupted grid resumes where it stopped. A cell being run
    is claimed (``KEY.claim`` holding the runner's PID), so the same command started twice (e.g. one thread each
    on a 2-core machine) splits the grid instead of running a cell twice; a dead runner's claim is taken over."""
    for cell in todo:
        path = out / f"{key(*cell)}.json"
        if list_only:
            claimed = _claimant(out / f"{key(*cell)}.claim")
            print(key(*cell), "done" if path.exists() else f"running (pid {claimed})" if claimed else "todo")
        elif not path.exists() and _claim(out / f"{key(*cell)}.claim"):
            try:
                if path.exists():  # another runner finished it between the two checks
                    continue
                print(f"[{label}] {key(*cell)}", flush=True)
                result = run_cell(*cell)
                path.write_text(json.dumps(result, indent=1))
                print(f"[{label}] {key(*cell)} done in {result['wall_s']:.0f}s: {summary(result)}", flush=True)
            finally:
                (out / f"{key(*cell)}.claim").unlink(missing_ok=True)


def _claimant(claim: Path) -> int | None:
    """The PID of a live process holding ``claim``, else None (no claim, or its holder died)."""
    try:
        pid = int(claim.read_text().strip() or 0)
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid if pid else None


def _claim(claim: Path) -> bool:
    """Take ``claim`` for this process unless a live process holds it."""
    if _claimant(claim) not in (None, os.getpid()):
        return False
    claim.unlink(missing_ok=True)
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another runner took it just now
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def app_cell(cfg: dict, clients: int, runs: Path, metrics: tuple[str, ...], command: str) -> dict:
    """One federated run of this project's ServerApp and ClientApps in-process (fedtt_flwr.inprocess) with run config
    ``cfg`` (its ``run-name`` a folder of ``runs``, started over if an interrupted run left one), and what a grid
    keeps of it: bytes per round both ways, the dev-metric curve against cumulative uplink MB, the final metrics."""
    from fedtt_flwr.inprocess import run_inprocess

    folder = runs / cfg["run-name"]
    shutil.rmtree(folder, ignore_errors=True)
    commit = _commit()  # the code this process runs was read at its start: as close as it gets
    t0 = time.perf_counter()
    run_inprocess({**cfg, "output-dir": str(runs)}, clients)
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"run_config": cfg, "clients": clients,
            "trainable_params": json.loads((folder / "config.json").read_text())["travelling_params"],
            "bytes_up_per_round": [x["bytes_up"] for x in lines[1:]],
            "bytes_down_per_round": [x["bytes_down"] for x in lines[1:]],
            "curve": [{"round": x["round"], "mb_up": x["total_bytes_up"] / 1e6, **{m: x[m] for m in metrics if m in x}}
                      for x in lines],
            "final": {m: lines[-1].get(m) for m in metrics}, "wall_s": round(time.perf_counter() - t0, 1),
            "command": command, "commit": commit}


def _commit() -> str | None:
    """The checkout's commit (with ``+changes`` when the tree differs from it): what a cell ran."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent.parent, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=RESULTS.parent.parent,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def mb_axis(ax, ylabel: str, title: str) -> None:
    """An axis of a dev metric against cumulative uplink MB: symlog from 0 (round 0 sent nothing)."""
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)
    ax.set_xlabel("cumulative uplink MB")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def save_plot(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def mb_to_level(result: dict, reference: dict | None, metric: str, margin: float = 0.01, down: bool = False) -> str:
    """Cumulative uplink MB (with ``down``: uplink plus downlink) at which ``result``'s curve first reaches
    ``reference``'s final ``metric`` minus ``margin``; "-" without a reference value, "not reached" if it never
    does."""
    if reference is None or reference["final"].get(metric) is None:
        return "-"
    level = reference["final"][metric] - margin - 1e-9  # a metric exactly at the level reaches it
    sent = [0.0, *itertools.accumulate(result["bytes_down_per_round"])]  # by round; round 0 sent nothing
    hit = next((p["mb_up"] + (sent[p["round"]] / 1e6 if down else 0.0) for p in result["curve"]
                if p.get(metric) is not None and p[metric] >= level), None)
    return f"{hit:.2f}" if hit is not None else "not reached"


def cells_main(description: str, cells: Callable[[tuple[int, ...]], list[tuple]], key: Callable[..., str],
               out: Path, run_cell: Callable[..., dict], report: Callable[[], None], label: str,
               seeds: str) -> None:
    """The command line of a resumable cell grid: ``--only KEYS``, ``--seeds``, ``--list``, ``--report``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--only", default="", help="cell keys, comma-separated")
    ap.add_argument("--seeds", default=seeds)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells(tuple(int(s) for s in args.seeds.split(",")))
            if not args.only or key(*c) in args.only.split(",")]
    if not args.report:
        run_cells(todo, key, out, run_cell, label, args.list, lambda r: r["final"])
    if not args.list:
        report()
