"""Flower processes this program starts, waits for and stops: the one helper of the simulation launcher
(:mod:`.launch`) and the deployment tools (:mod:`.deploy`).

Every process starts in a session of its own, under a watchdog (:mod:`.watchdog`) that stops its whole tree if
this program dies without cleaning up (``kill -9``, a closed terminal, the OOM killer); SIGTERM and SIGHUP
become ``SystemExit`` so the normal path stops it first. ``flwr run`` exits 0 for failed runs, so
:func:`run_and_wait` reads the run's final status from ``flwr ls``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import watchdog

OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_DEDUP_LOGS": "0",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error"),
}
APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: this repository's root


def flwr_env(home: str | os.PathLike) -> dict:
    """Environment for a Flower process with its own ``FLWR_HOME``: offline-safe, and this venv's tools
    first on PATH (a SuperLink spawns flower-superexec & co. by name)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60, what: str = "the SuperLink") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start-up with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not open port {port} within {timeout:.0f}s")


def _toml_value(v) -> str:
    """A value as ``flwr run --run-config`` parses it: text in double quotes, or single ones when it holds a double
    quote (Flower's parser takes no escapes); text it cannot carry is refused here, not after the start."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        if "\\" in v or "\n" in v or "\r" in v or ('"' in v and "'" in v):
            raise ValueError(f"run-config value {v!r}: flwr run cannot pass a backslash, a line break, or both kinds "
                             "of quote in one value; rename it (a file path, a label) without them")
        return f"'{v}'" if '"' in v else f'"{v}"'
    return repr(v)


def format_overrides(overrides: dict) -> str:
    """``{"rank": 8, "task": "rte"}`` -> ``rank=8 task="rte"`` (TOML values, as flwr expects)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items())


def run_status(env: dict, connection: str) -> str | None:
    out = subprocess.run([flower_bin("flwr"), "ls", connection, "--format", "json"], env=env, capture_output=True,
                         text=True, timeout=120)
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return None
    return runs[-1].get("status") if runs else None


def wait_for_run(env: dict, connection: str, started: float, timeout: float) -> str | None:
    """Poll the newest run's status on ``connection`` until it is ``finished:*``; return that status."""
    status, delay = None, 1.0
    while time.monotonic() - started < timeout:
        status = run_status(env, connection)
        if status and status.startswith("finished"):
            break
        # each `flwr ls` is a Python start-up (~1 CPU-second): back off so polling does not eat a core
        time.sleep(delay)
        delay = min(delay * 1.5, 15.0)
    print(f"[fedtt] run status: {status} ({time.monotonic() - started:.0f}s)", flush=True)
    return status


def run_and_wait(env: dict, connection: str, run_config: dict | None = None, timeout: float = 6 * 3600,
                 app_dir: Path = APP_DIR, stream: bool = True, extra: list[str] | None = None) -> str | None:
    """``flwr run`` the app on ``connection``'s SuperLink and wait for the run's final status."""
    cmd = [flower_bin("flwr"), "run", str(app_dir), connection, *(extra or [])]
    if stream:
        cmd.append("--stream")
    if run_config:
        cmd += ["--run-config", format_overrides(run_config)]
    started = time.monotonic()
    if subprocess.run(cmd, env=env, check=False, timeout=timeout).returncode != 0:  # nothing was submitted
        print("[fedtt] flwr run did not submit the run (its message is above)", flush=True)
        return None
    return wait_for_run(env, connection, started, timeout)


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a process we started and every process group under it (a SuperLink's superexec, the simulation,
    Ray)."""
    watchdog.stop_tree(proc.pid, lambda: proc.poll() is None)


def exit_on_signals(signals: tuple[str, ...] = ("SIGTERM", "SIGHUP")) -> dict[int, object]:
    """Turn SIGTERM (a job scheduler, `kill PID`) and SIGHUP (a closed terminal) into SystemExit so the
    SuperLink and Ray get stopped; Python's default would end the process at once and leave them running.
    Returns the previous handlers, for :func:`restore_signals`; none outside the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    return {sig: signal.signal(sig, _raise) for sig in (getattr(signal, n) for n in signals if hasattr(signal, n))}


def restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        if handler is not None:
            signal.signal(sig, handler)


class Processes:
    """Processes started here, each in a session of its own with a watchdog, stopped by PID (with everything
    they started) in reverse order: a SuperNode before the SuperLink it talks to. As a context manager it also
    turns SIGTERM and SIGHUP into ``SystemExit``, so `kill PID` or a closed terminal still stops them."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, subprocess.Popen]] = []
        self._previous: dict[int, object] = {}

    def start(self, cmd: list[str], env: dict, log_file: Path, cwd: Path) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=str(cwd))
        guard = watchdog.start(proc.pid, expect=Path(cmd[0]).name, grace=5.0, env=env,
                               log_file=log_file.with_name(log_file.stem + ".watchdog.log"))
        self.procs.append((proc, guard))
        return proc

    def stop(self) -> None:
        while self.procs:
            proc, guard = self.procs.pop()
            stop_process(proc)
            watchdog.release(guard)  # only now: had the stop failed or been killed, the watchdog finishes it

    def __enter__(self) -> Processes:
        self._previous = exit_on_signals()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            restore_signals(self._previous)
