"""The resumable cell grid of the benchmark scripts: two runners of one grid split it, a dead runner's cell is
taken over, a finished cell never runs again."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

from benchmarks._common import run_cells


def _key(name: str) -> str:
    return name


def _cell(name: str, out: Path | None = None) -> dict:
    """A cell that, in a grid with ``out``, waits (at most 60 s) until another runner holds or finished a cell,
    so the test does not depend on how fast the second runner starts."""
    import os
    import time

    def holder(f: Path) -> int:
        try:
            return json.loads(f.read_text())["pid"] if f.suffix == ".json" else int(f.read_text())
        except (ValueError, OSError):  # being written or removed just now
            return 0

    def others() -> bool:
        return any(holder(f) not in (0, os.getpid()) for f in [*out.glob("*.claim"), *out.glob("*.json")])

    deadline = time.monotonic() + 60
    while out is not None and not others() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"pid": os.getpid(), "wall_s": 0.0}


def _runner(out: str, names: list[str]) -> None:
    run_cells([(n,) for n in names], _key, Path(out), lambda n: _cell(n, Path(out)), "t")


def test_two_runners_split_the_grid_and_never_run_a_cell_twice(tmp_path):
    names = [f"c{i}" for i in range(6)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_runner, args=(str(tmp_path), names)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    pids = {n: json.loads((tmp_path / f"{n}.json").read_text())["pid"] for n in names}
    assert set(pids.values()) == {p.pid for p in procs}, "both runners took cells"
    assert not list(tmp_path.glob("*.claim")), "claims are released"


def test_a_dead_runners_claim_is_taken_over_and_a_live_one_respected(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "stale.claim").write_text(dead.stdout.strip())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "busy.claim").write_text(str(live.pid))
        run_cells([("stale",), ("busy",)], _key, tmp_path, _cell, "t", list_only=True)
        assert capsys.readouterr().out.split("\n")[:2] == ["stale todo", f"busy running (pid {live.pid})"]
        run_cells([("stale",), ("busy",)], _key, tmp_path, _cell, "t")
        assert (tmp_path / "stale.json").exists()
        assert not (tmp_path / "busy.json").exists()
    finally:
        live.kill()
        live.wait()
    (tmp_path / "stale.json").write_text(json.dumps({"pid": -1, "wall_s": 0}))
    run_cells([("stale",)], _key, tmp_path, _cell, "t")
    assert json.loads((tmp_path / "stale.json").read_text())["pid"] == -1, "a finished cell is not rerun"


def test_mb_to_level_counts_the_round_that_reaches_the_level_and_optionally_the_downlink():
    """The MB a run sent up to and including the first round whose metric reaches the reference's final minus one
    point; with ``down`` the downlink of those rounds too. Rounds without the metric (a personalised method's
    round 0) never count as reaching it."""
    from benchmarks._common import mb_to_level

    run = {"curve": [{"round": 0, "mb_up": 0.0}, {"round": 1, "mb_up": 1.0, "accuracy": 0.70},
                     {"round": 2, "mb_up": 2.0, "accuracy": 0.79}, {"round": 3, "mb_up": 3.0, "accuracy": 0.75}],
           "bytes_down_per_round": [5e6, 5e6, 5e6]}
    reference = {"final": {"accuracy": 0.80}}
    assert mb_to_level(run, reference, "accuracy") == "2.00"  # 0.79 is 0.80 - 0.01 up to float rounding
    assert mb_to_level(run, {"final": {"accuracy": 0.76}}, "accuracy") == "2.00"  # 0.70 misses 0.75
    assert mb_to_level(run, reference, "accuracy", down=True) == "12.00"  # 2 MB up + 2 rounds of 5 MB down
    assert mb_to_level(run, {"final": {"accuracy": 0.90}}, "accuracy") == "not reached"
    assert mb_to_level(run, None, "accuracy") == "-"
    assert mb_to_level(run, {"final": {"accuracy": None}}, "accuracy") == "-"
