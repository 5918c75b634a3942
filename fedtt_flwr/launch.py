"""Run the Flower app through the real ``flwr run`` path, safely, on an offline machine.

``flwr run`` talks to a SuperLink even for simulation, its exit code is 0 for failed runs, and a
managed local SuperLink outlives the command. This launcher therefore:

1. uses its own ``FLWR_HOME`` (a temporary folder unless given) and disables the SuperLink's runtime
   dependency installation (it would try to reinstall the project, and torch, from the network);
2. starts a simulation SuperLink on a free loopback port, in its own process group;
3. runs ``flwr run <app> <connection> --stream`` with the federation and run config given;
4. polls ``flwr ls --format json`` until the run is ``finished:*`` and returns 0 only for
   ``finished:completed``;
5. stops the SuperLink it started (by PID, with every process group under it), whatever happened; a
   watchdog process (:mod:`fedtt_flwr.watchdog`) does it if this one dies first (``kill -9``, a closed
   terminal, the OOM killer).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
APP_DIR = Path(__file__).resolve().parents[1]


def flwr_env(home: str | os.PathLike) -> dict:
    """Environment for a Flower process with its own ``FLWR_HOME``: offline-safe, and this venv's tools
    first on PATH (a SuperLink spawns flower-superexec & co. by name)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited at start-up with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"the SuperLink did not open port {port} within {timeout:.0f}s")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def format_overrides(overrides: dict) -> str:
    """``{"rank": 8, "task": "rte"}`` -> ``rank=8 task="rte"`` (TOML values, as flwr expects)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items())


def _run_status(env: dict, connection: str) -> str | None:
    out = subprocess.run([_bin("flwr"), "ls", connection, "--format", "json"], env=env, capture_output=True,
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
        status = _run_status(env, connection)
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
    cmd = [_bin("flwr"), "run", str(app_dir), connection, *(extra or [])]
    if stream:
        cmd.append("--stream")
    if run_config:
        cmd += ["--run-config", format_overrides(run_config)]
    started = time.monotonic()
    subprocess.run(cmd, env=env, check=False, timeout=timeout)
    return wait_for_run(env, connection, started, timeout)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the SuperLink we started and every process group under it (superexec, the simulation, Ray)."""
    watchdog.stop_tree(proc.pid, lambda: proc.poll() is None)


def _exit_on_signals(signals: tuple[str, ...] = ("SIGTERM", "SIGHUP")) -> dict[int, object]:
    """Turn SIGTERM (a job scheduler, `kill PID`) and SIGHUP (a closed terminal) into SystemExit so the
    SuperLink and Ray get stopped; Python's default would end the process at once and leave them running.
    Returns the previous handlers, for :func:`_restore_signals`; none outside the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    return {sig: signal.signal(sig, _raise) for sig in (getattr(signal, n) for n in signals if hasattr(signal, n))}


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        if handler is not None:
            signal.signal(sig, handler)


def _exit_on_sigterm():
    """SIGTERM only (:func:`_exit_on_signals`); returns the old handler (or None)."""
    return _exit_on_signals(("SIGTERM",)).get(signal.SIGTERM)


def simulate(
    num_supernodes: int = 10,
    run_config: dict | None = None,
    cpus_per_client: int = 1,
    gpus_per_client: float = 0.0,
    flwr_home: str | None = None,
    app_dir: Path = APP_DIR,
    timeout: float = 6 * 3600,
    stream: bool = True,
) -> int:
    """Run the app as a Ray simulation through ``flwr run``; return 0 iff the run completed."""
    home = Path(flwr_home) if flwr_home else Path(tempfile.mkdtemp(prefix="fedtt-flwr-home-"))
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    connection = "fedtt-local"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = flwr_env(home)
    log_file = home / "superlink.log"
    cmd = [_bin("flower-superlink"), "--insecure", "--simulation", "--port", str(port),
           "--control-api-address", f"127.0.0.1:{_free_port()}", "--fleet-api-address", f"127.0.0.1:{_free_port()}",
           "--disable-runtime-dependency-installation", "--database", str(home / "state.db")]
    print(f"[fedtt] starting a simulation SuperLink on 127.0.0.1:{port} (FLWR_HOME={home})", flush=True)
    ok = False
    link = guard = None
    previous = _exit_on_signals()
    try:
        with open(log_file, "w") as log:
            link = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=str(home))
        # if this process dies without its finally (kill -9), the watchdog stops the SuperLink's tree
        guard = watchdog.start(link.pid, expect="flower-superlink", grace=5.0, env=env, log_file=home / "watchdog.log")
        _wait_port(port, link)
        fed = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client} " \
              f"client-resources-num-gpus={gpus_per_client}"
        status = run_and_wait(env, connection, run_config, timeout, app_dir, stream, ["--federation-config", fed])
        ok = status == "finished:completed"
        if not ok:
            print(f"[fedtt] the run did not complete; SuperLink log: {log_file}", file=sys.stderr, flush=True)
    except BaseException:
        ok = False
        raise
    finally:
        if link is not None:
            _stop(link)
        if guard is not None:
            watchdog.release(guard)  # only now: had _stop failed or been killed, the watchdog would finish it
        _restore_signals(previous)
        if ok and not flwr_home and os.environ.get("FEDTT_KEEP_FLWR_HOME") != "1":
            shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1
