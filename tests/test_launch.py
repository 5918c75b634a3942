"""The launcher stops everything it started even when it dies without its ``finally`` (``kill -9``): the
watchdog (fedtt_flwr/watchdog.py) with stand-in processes (seconds), then the real ``fedtt-flwr simulate``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedtt_flwr import watchdog
from fedtt_flwr.processes import exit_on_signals, restore_signals

ROOT = Path(__file__).resolve().parents[1]
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ")

# A stand-in SuperLink ("flower-superlink" in its argv, for the PID-reuse guard) that starts a child in a
# session of its own, as superexec does, which ignores SIGTERM (so only the SIGKILL that follows stops it).
LINK = ("import signal, subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'], start_new_session=True); "
        "print(p.pid, flush=True); time.sleep(600)")
# A stand-in launcher: starts the SuperLink and its watchdog as simulate() does, reports their PIDs, waits.
LAUNCHER = f"""
import importlib.util, subprocess, sys, time
spec = importlib.util.spec_from_file_location("fedtt_watchdog", {str(Path(watchdog.__file__))!r})
wd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wd)
link = subprocess.Popen([sys.executable, "-c", {LINK!r}, "flower-superlink"], stdout=subprocess.PIPE,
                        start_new_session=True, text=True)
guard = wd.start(link.pid, expect="flower-superlink", grace=1.0, log_file=sys.argv[1])
print(link.pid, link.stdout.readline().strip(), guard.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    return watchdog.identity(pid) is not None  # a zombie counts as gone


def _wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _kill(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def test_the_watchdog_stops_the_tree_when_its_launcher_is_killed(tmp_path):
    log = tmp_path / "superlink.watchdog.log"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(log)], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    pids: list[int] = []
    try:
        pids = [int(x) for x in launcher.stdout.readline().split()]  # SuperLink, its child, the watchdog
        assert len(pids) == 3, "the stand-in launcher did not start"
        link, grandchild, guard = pids
        assert os.getpgid(grandchild) != os.getpgid(link)  # really another group
        assert all(_alive(p) for p in pids)
        launcher.kill()  # SIGKILL: no finally, no atexit
        launcher.wait()
        assert _wait_gone(pids, 10) == [], f"left running: {_wait_gone(pids, 0)}; log: {log.read_text()}"
        assert "the launcher died" in log.read_text()
    finally:
        launcher.kill()
        launcher.wait()
        _kill(p for p in pids if _alive(p))


def _sleeper(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *argv], start_new_session=True)


def test_a_released_watchdog_exits_and_leaves_the_tree_alone():
    link = _sleeper("flower-superlink")
    try:
        guard = watchdog.start(link.pid, expect="flower-superlink", grace=1.0)
        time.sleep(0.5)  # let it read the root's identity
        watchdog.release(guard)
        assert guard.returncode == 0
        assert link.poll() is None
    finally:
        link.kill()
        link.wait()


def test_the_watchdog_leaves_another_process_alone(monkeypatch):
    """The PID-reuse guard: a root that is not the expected program, or whose identity (start time,
    command line) changed by the time the launcher died, is not killed."""
    other = _sleeper()  # no "flower-superlink" in its command line
    try:
        guard = watchdog.start(other.pid, expect="flower-superlink", grace=1.0)
        guard.stdin.close()  # end of file without "done": the launcher "died"
        assert guard.wait(timeout=10) == 0
        assert other.poll() is None

        identities = iter(["1 flower-superlink", "2 flower-superlink"])  # the PID now names another process
        monkeypatch.setattr(watchdog, "identity", lambda pid: next(identities))
        assert watchdog.watch(other.pid, "flower-superlink", 1.0, stream=iter([])) == "gone"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_sighup_and_sigterm_end_the_launcher_through_its_finally():
    """A closed terminal (SIGHUP) must stop the run like `kill PID` (SIGTERM), then the handlers come back."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for sig in (signal.SIGHUP, signal.SIGTERM):
        previous = exit_on_signals()
        try:
            with pytest.raises(SystemExit) as exc:
                os.kill(os.getpid(), sig)
                time.sleep(1)  # the handler runs between bytecodes of the main thread
            assert exc.value.code == 128 + sig
        finally:
            restore_signals(previous)
        assert {s: signal.getsignal(s) for s in before} == before


# --- the real launcher -------------------------------------------------------------------------------------

def _run_processes(home: Path, sessions: set[int] = frozenset()) -> dict[int, str]:
    """Processes of the run: those with ``FLWR_HOME=home`` in their environment (every Flower process of the run
    and the watchdog inherit it) or in one of ``sessions`` (Ray's agents overwrite their environment with their
    process title); zombies and processes we may not read are skipped."""
    marker = b"FLWR_HOME=" + str(home).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state, _, _, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            if state != "Z" and (int(session) in sessions or marker in (entry / "environ").read_bytes().split(b"\0")):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
        except (OSError, ValueError):
            continue
    return found


def _sessions(pids) -> set[int]:
    found = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            found.add(os.getsid(pid))
    return found - {os.getsid(0)}


def _folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _wait_for(condition, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    return condition()


@needs_proc
def test_kill_9_of_simulate_leaves_no_process_of_the_run(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """The acceptance test of the issue: `kill -9` of `fedtt-flwr simulate` mid-run, then within seconds no
    SuperLink, SuperExec, simulation, Ray or `flwr run` process of that run is left, and the run folder stops
    growing. (Before the watchdog the SuperLink and SuperExec ran on forever.)"""
    home, out = tmp_path / "flwr-home", tmp_path / "runs"
    run_folder = out / "killed"
    sets = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(out),
            "num-server-rounds": 10000, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 3,
            "run-name": "killed"}
    cmd = [sys.executable, "-m", "fedtt_flwr.cli", "simulate", "--num-clients", "3", "--flwr-home", str(home)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]  # TOML values: strings quoted, numbers bare
    env = {k: v for k, v in os.environ.items() if k != "FLWR_HOME"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    log = tmp_path / "launcher.log"
    with open(log, "w") as log_file:
        launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    metrics = run_folder / "metrics.jsonl"
    sessions: set[int] = {launcher.pid}
    try:
        # under way: a round trained by the ClientApps on Ray (its metrics line written), Ray up
        under_way = _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 90)
        assert launcher.poll() is None, f"the launcher ended early:\n{log.read_text()[-3000:]}"
        assert under_way, f"the run did not get under way in time:\n{log.read_text()[-3000:]}"
        running = _run_processes(home)
        assert any("flower-superlink" in c for c in running.values()), running
        assert any("ray::" in c or "raylet" in c for c in running.values()), running
        sessions = _sessions([launcher.pid, *running])  # the launcher's, the SuperLink's, SuperExec's, ...
        assert len(sessions) >= 3, sessions

        launcher.kill()  # SIGKILL
        launcher.wait()
        gone = _wait_for(lambda: not _run_processes(home, sessions), 15)
        guard_log = home / "superlink.watchdog.log"
        assert gone, f"left running 15 s after kill -9: {_run_processes(home, sessions)}; watchdog: " \
                     f"{guard_log.read_text() if guard_log.exists() else '-'}"
        state = _folder_state(run_folder)
        time.sleep(3)
        assert _folder_state(run_folder) == state, "the run folder still grows"
        assert "the launcher died" in (home / "superlink.watchdog.log").read_text()
    finally:
        # whatever is left (a failing test must not leave a run behind): by PID, what this test started
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        for _ in range(3):
            _kill(_run_processes(home, sessions))
            time.sleep(0.5)
