"""Compare finished runs: a table and plots from their run folders (``fedtt-flwr report RUN [RUN ...]``).

A run folder holds ``config.json`` (the run config and what travels), ``metrics.jsonl`` (one line per round,
round 0 being the initial adapters) and, once finished, ``summary.json``. Nothing here needs the model, torch or
Flower: only those files, so reports can be made anywhere the folders are copied to.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

#: metrics where lower is better (everything else a report compares is higher-is-better)
LOWER_IS_BETTER = frozenset({"mse", "perplexity", "loss"})


def lower_is_better(metric: str) -> bool:
    return metric.removeprefix("fed_") in LOWER_IS_BETTER


def task_metrics(run_config: dict) -> list[str]:
    """The metrics the run's task records, its main one first (as the ServerApp picks it): a preset's, a custom
    task's ``metrics`` key, else its kind's default."""
    from .tasks import DEFAULT_METRICS, PRESETS

    task = str(run_config.get("task", ""))
    if task in PRESETS:
        return list(PRESETS[task].metrics)
    named = [m.strip() for m in str(run_config.get("metrics") or "").split(",") if m.strip()]
    if named:
        return named
    kind = run_config.get("task-kind", run_config.get("task_kind", "auto"))
    if kind == "auto":
        kind = "multiple-choice" if run_config.get("choice-columns", run_config.get("choice_columns")) else \
            "classification"
    return list(DEFAULT_METRICS.get(kind, ()))


@dataclass
class Run:
    folder: Path
    config: dict
    rounds: list[dict]
    summary: dict | None

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    @property
    def finished(self) -> bool:
        """A summary of the rounds it holds (a finished run continued with more rounds and stopped early is not)."""
        return self.summary is not None and self.summary.get("rounds", -1) >= int(self.rounds[-1]["round"])

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    def metric_names(self) -> list[str]:
        """The dev metrics the run recorded, its task's main metric first (a personalised method's: ``fed_``)."""
        from .tasks import _KIND_METRICS

        known = task_metrics(self.config.get("run_config") or {})
        every = sorted(set().union(*_KIND_METRICS.values()))
        names = [*known, *(m for m in every if m not in known)]
        seen = {k for r in self.rounds for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        central = [m for m in names if m in seen]
        nodes = [f"fed_{m}" for m in names if f"fed_{m}" in seen]
        return central + nodes if central else nodes

    def curve(self, metric: str) -> list[tuple[int, float, float]]:
        """``(round, cumulative uplink MB, value)`` for every round that recorded ``metric`` (finite values only: a
        diverged round's NaN is no one's best)."""
        return [(int(r["round"]), r.get("total_bytes_up", 0) / 1e6, float(r[metric])) for r in self.rounds
                if isinstance(r.get(metric), int | float) and math.isfinite(r[metric])]


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
    """``(round, cumulative uplink MB)`` where ``metric`` first reaches ``level`` (at or below it for a
    lower-is-better metric); None if it never does."""
    low = lower_is_better(metric)
    return next(((r, mb) for r, mb, v in run.curve(metric) if (v <= level if low else v >= level)), None)


def labels(runs: list[Run]) -> list[str]:
    """Each run's name; where two share a folder name, its path below the runs' common parent."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    parent = _common_parent(runs)
    return [str(r.folder.resolve().relative_to(parent)) for r in runs]


def table(runs: list[Run], metric: str, level: float) -> list[dict]:
    """One row per run: final and best metric, rounds and uplink MB to ``level``, MB both ways, wall time."""
    rows = []
    pick = min if lower_is_better(metric) else max
    for run, name in zip(runs, labels(runs), strict=True):
        curve = run.curve(metric)
        last = run.rounds[-1]
        best = pick(curve, key=lambda c: c[2]) if curve else None
        hit = reach(run, metric, level)
        wall = run.summary.get("wall_s") if run.finished else last.get("elapsed_s")
        rows.append({
            "run": name, "method": run.method, "rounds": int(last["round"]),
            "final": curve[-1][2] if curve else None, "best": best[2] if best else None,
            "best_round": best[0] if best else None,
            "rounds_to_level": hit[0] if hit else None, "mb_to_level": hit[1] if hit else None,
            "mb_up": last.get("total_bytes_up", 0) / 1e6, "mb_down": last.get("total_bytes_down", 0) / 1e6,
            "wall_s": wall, "finished": run.finished,
        })
    return rows


def markdown(rows: list[dict], metric: str, level: float) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    to = f"{'<=' if lower_is_better(metric) else ''} {level:.4g}".strip()
    lines = [f"| run | method | rounds | final {metric} | best (round) | rounds to {to} "
             f"| uplink MB to {to} | uplink MB | downlink MB | wall s |", "|---" * 10 + "|"]
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
    for run, name in zip(runs, labels(runs), strict=True):
        curve = run.curve(metric)
        if not curve:
            continue
        rounds, mb, values = zip(*curve, strict=True)
        label = f"{name} ({run.method})"
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
    ``metric``: the first metric every run recorded (the task's main one) unless given; ``level``: the worst final
    value among the runs (a level every run reached) unless given. Runs of different tasks are compared with a
    warning in the table's file."""
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
        finals = [r.curve(metric)[-1][2] for r in runs if r.curve(metric)]
        if not finals:
            raise ValueError(f"report: no run recorded a finite {metric} (a diverged run has NaN)")
        level = (max if lower_is_better(metric) else min)(finals)
    folder = Path(out).expanduser() if out else (runs[0].folder if len(runs) == 1 else _common_parent(runs))
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"report: --out {folder} is a file; give a folder for the table and the plot")
    folder.mkdir(parents=True, exist_ok=True)
    stem = "report" if len(runs) == 1 and not out else _stem(runs)
    rows = table(runs, metric, level)
    text = markdown(rows, metric, level)
    md = folder / f"{stem}.md"
    tasks = sorted({str((r.config.get("run_config") or {}).get("task", "?")) for r in runs})
    note = f"\nNote: these runs are of different tasks ({', '.join(tasks)}).\n" if len(tasks) > 1 else ""
    md.write_text(f"Runs: {', '.join(str(r.folder) for r in runs)}\n{note}\n{text}\n")
    png = plot(runs, metric, level, folder / f"{stem}.png")
    return {"metric": metric, "level": level, "rows": rows, "table": text, "markdown": md, "plot": png}


def _common_parent(runs: list[Run]) -> Path:
    parents = [r.folder.resolve().parent for r in runs]
    common = parents[0]
    while not all(p == common or common in p.parents for p in parents):
        common = common.parent
    return common


def _stem(runs: list[Run]) -> str:
    """``report-a-vs-b``, or a digest of the folders where the names repeat or are too long for a file name."""
    names = [r.name for r in runs]
    joined = "-vs-".join(names)
    if len(joined) <= 80 and len(set(names)) == len(names):
        return f"report-{joined}"
    return "report-" + hashlib.sha256("\n".join(str(r.folder.resolve()) for r in runs).encode()).hexdigest()[:8]
