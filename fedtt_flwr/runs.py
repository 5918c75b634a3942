"""Compare finished runs: a table and plots from their run folders (``fedtt-flwr report RUN [RUN ...]``).

A run folder holds ``config.json`` (the run config and what travels), ``metrics.jsonl`` (one line per round,
round 0 being the initial adapters) and, once finished, ``summary.json``. Nothing here needs the model, torch or
Flower: only those files, so reports can be made anywhere the folders are copied to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    folder: Path
    config: dict
    rounds: list[dict]
    summary: dict | None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    def metric_names(self) -> list[str]:
        """The dev metrics the run recorded, its task's main metric first."""
        from .tasks import PRESETS

        task = self.config.get("run_config", {}).get("task", "")
        known = list(PRESETS[task].metrics) if task in PRESETS else []
        known += [f"fed_{m}" for m in known]
        seen = {k for r in self.rounds for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        ordered = [m for m in known if m in seen]
        extra = sorted(k for k in seen if k in {"accuracy", "f1", "mcc", "pearson", "spearman", "exact_match"}
                       and k not in ordered)
        return ordered + extra

    def curve(self, metric: str) -> list[tuple[int, float, float]]:
        """``(round, cumulative uplink MB, value)`` for every round that recorded ``metric``."""
        return [(int(r["round"]), r.get("total_bytes_up", 0) / 1e6, float(r[metric])) for r in self.rounds
                if isinstance(r.get(metric), int | float)]


def load_run(folder: str | Path) -> Run:
    """A run folder's files; one clear error naming the folder and what is missing or unreadable."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder (give a run folder: the one holding metrics.jsonl)")
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        raise ValueError(f"{path}: no metrics.jsonl (not a run folder, or the run never finished round 0)")
    rounds = []
    for i, line in enumerate(metrics.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{metrics}, line {i}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise ValueError(f"{metrics}, line {i}: not a round's record (no integer 'round')")
        rounds.append(record)
    if not rounds:
        raise ValueError(f"{metrics}: empty")
    config = _json(path / "config.json") or {}
    return Run(path, config, rounds, _json(path / "summary.json"))


def _json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg})") from None
    return value if isinstance(value, dict) else None


def reach(run: Run, metric: str, level: float) -> tuple[int, float] | None:
    """``(round, cumulative uplink MB)`` where ``metric`` first reaches ``level``; None if it never does."""
    return next(((r, mb) for r, mb, v in run.curve(metric) if v >= level), None)


def table(runs: list[Run], metric: str, level: float) -> list[dict]:
    """One row per run: final and best metric, rounds and uplink MB to ``level``, MB both ways, wall time."""
    rows = []
    for run in runs:
        curve = run.curve(metric)
        last = run.rounds[-1]
        best = max(curve, key=lambda c: c[2]) if curve else None
        hit = reach(run, metric, level)
        wall = (run.summary or {}).get("wall_s", last.get("elapsed_s"))
        rows.append({
            "run": run.name, "method": run.method, "rounds": int(last["round"]),
            "final": curve[-1][2] if curve else None, "best": best[2] if best else None,
            "best_round": best[0] if best else None,
            "rounds_to_level": hit[0] if hit else None, "mb_to_level": hit[1] if hit else None,
            "mb_up": last.get("total_bytes_up", 0) / 1e6, "mb_down": last.get("total_bytes_down", 0) / 1e6,
            "wall_s": wall, "finished": run.summary is not None,
        })
    return rows


def markdown(rows: list[dict], metric: str, level: float) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"| run | method | rounds | final {metric} | best (round) | rounds to {level:.4g} "
             f"| uplink MB to {level:.4g} | uplink MB | downlink MB | wall s |", "|---" * 10 + "|"]
    for r in rows:
        best = "-" if r["best"] is None else f"{r['best']:.4f} ({r['best_round']})"
        reached = "not reached" if r["rounds_to_level"] is None else str(r["rounds_to_level"])
        lines.append(f"| {r['run']}{'' if r['finished'] else ' (unfinished)'} | {r['method']} | {r['rounds']} | "
                     f"{num(r['final'], '.4f')} | {best} | {reached} | {num(r['mb_to_level'], '.2f')} | "
                     f"{r['mb_up']:.2f} | {r['mb_down']:.2f} | {num(r['wall_s'], '.0f')} |")
    return "\n".join(lines)


def plot(runs: list[Run], metric: str, level: float | None, path: Path) -> Path:
    """The metric against the round and against cumulative uplink MB, every run on both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (by_round, by_mb) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        curve = run.curve(metric)
        if not curve:
            continue
        rounds, mb, values = zip(*curve, strict=True)
        label = f"{run.name} ({run.method})"
        by_round.plot(rounds, values, marker="o", ms=3, label=label)
        by_mb.plot(mb, values, marker="o", ms=3, label=label)
    for ax, xlabel in ((by_round, "round"), (by_mb, "cumulative uplink MB")):
        if level is not None:
            ax.axhline(level, color="grey", lw=0.6, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"dev {metric}")
        ax.grid(alpha=0.3)
    by_mb.set_xlim(left=0)
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_round.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(folders: list[str | Path], metric: str | None = None, level: float | None = None,
           out: str | Path | None = None) -> dict:
    """Load the runs, write ``<name>.md`` (the table) and ``<name>.png`` (the plots) into ``out`` (default: the run's
    own folder for one run, the runs' common parent for several) and return the rows, the paths and the table.
    ``metric``: the first metric every run recorded (the task's main one) unless given; ``level``: the lowest final
    value among the runs (a level every run reached) unless given."""
    runs = [load_run(f) for f in folders]
    if not runs:
        raise ValueError("report: give at least one run folder")
    common = [m for m in runs[0].metric_names() if all(m in r.metric_names() for r in runs)]
    if metric is None:
        if not common:
            raise ValueError("report: the runs share no dev metric (" + "; ".join(
                f"{r.name}: {', '.join(r.metric_names()) or 'none'}" for r in runs) + ")")
        metric = common[0]
    elif not all(r.curve(metric) for r in runs):
        missing = [r.name for r in runs if not r.curve(metric)]
        raise ValueError(f"report: metric {metric!r} is not recorded by {', '.join(missing)} (they have: "
                         f"{', '.join(common) or 'none in common'})")
    if level is None:
        level = min(r.curve(metric)[-1][2] for r in runs)
    folder = Path(out) if out else (runs[0].folder if len(runs) == 1 else _common_parent(runs))
    folder.mkdir(parents=True, exist_ok=True)
    stem = "report" if len(runs) == 1 and not out else _stem(runs)
    rows = table(runs, metric, level)
    text = markdown(rows, metric, level)
    md = folder / f"{stem}.md"
    md.write_text(f"Runs: {', '.join(str(r.folder) for r in runs)}\n\n{text}\n")
    png = plot(runs, metric, level, folder / f"{stem}.png")
    return {"metric": metric, "level": level, "rows": rows, "table": text, "markdown": md, "plot": png}


def _common_parent(runs: list[Run]) -> Path:
    parents = [r.folder.resolve().parent for r in runs]
    common = parents[0]
    while not all(p == common or common in p.parents for p in parents):
        common = common.parent
    return common


def _stem(runs: list[Run]) -> str:
    """``report-a-vs-b``, or a digest of the folders where the names are too long for a file name."""
    joined = "-vs-".join(r.name for r in runs)
    if len(joined) <= 80:
        return f"report-{joined}"
    return "report-" + hashlib.sha256("\n".join(str(r.folder.resolve()) for r in runs).encode()).hexdigest()[:8]
