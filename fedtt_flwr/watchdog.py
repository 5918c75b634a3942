"""Stop a process tree when the program that started it dies, ``kill -9`` included.

A ``finally`` does not run on SIGKILL (nor on the OOM killer), so a launcher cannot stop the SuperLink it
started then: the SuperLink, its SuperExec, the simulation and Ray ran on, writing into the run folder. The
launcher therefore also starts this small supervisor (:func:`start`), in a session of its own so that terminal
signals do not reach it, with a pipe from the launcher as its stdin. It blocks reading the pipe:

* the launcher writes ``done`` once it has stopped the tree itself (:func:`release`): the watchdog exits;
* end of file without ``done`` means the launcher died (the kernel closed its end of the pipe): the watchdog
  stops the tree as the launcher would have (:func:`stop_tree`: every process group under the root, SIGTERM,
  a grace period, SIGKILL) and exits.

The root is identified by its PID *and* its start time and command line, so a PID reused by the time the
launcher dies is left alone. Standard library only, and run by path with ``python -I``: it starts in tens of
milliseconds, without importing the package (torch). Linux and macOS (``ps`` where there is no ``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DONE = b"done"


def process_groups_under(pid: int) -> set[int]:
    """Process groups of ``pid`` and all its descendants. The SuperLink's superexec starts the
    simulation in a session of its own, so killing the SuperLink's group alone leaves Ray running."""
    try:
        out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {pid}
    children: dict[int, list[tuple[int, int]]] = {}
    for line in out.splitlines():
        p, pp, pg = (int(x) for x in line.split())
        children.setdefault(pp, []).append((p, pg))
    groups, todo = {pid}, [pid]
    while todo:
        for child, group in children.get(todo.pop(), []):
            groups.add(group)
            todo.append(child)
    groups.discard(os.getpgrp())  # never our own
    return groups


def killpgs(groups: set[int], sig: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_tree(pid: int, running: Callable[[], bool], grace: float = 15.0) -> None:
    """Stop ``pid`` (the root, which must lead its own process group) and every process group under it:
    SIGTERM, up to ``grace`` seconds for the root to end, then SIGKILL for whatever is left.

    ``running`` says whether the root still runs: ``proc.poll() is None`` for our own child (polling reaps
    it), :func:`identity` unchanged for a process we did not start."""
    groups = process_groups_under(pid)  # before any signal: once the root is gone its children are orphans
    if running():
        killpgs(groups, signal.SIGTERM)
        _wait_until(lambda: not running(), grace)
    killpgs(groups, signal.SIGKILL)  # whatever is left, the root included
    _wait_until(lambda: not running(), 5.0)


def identity(pid: int) -> str | None:
    """Start time and command line of a live process; None when it is gone or a zombie. The same string
    later means the same process: a PID alone may have been reused by then."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone (or not ours to read)
            return None
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
        state, start = fields[0], fields[19]
        if state in ("Z", "X"):
            return None
        command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{start} {command}"
    try:  # macOS & co.: no /proc
        out = subprocess.run(["ps", "-o", "stat=", "-o", "lstart=", "-o", "command=", "-p", str(pid)],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    if not out or out.startswith("Z"):
        return None
    return out.split(None, 1)[1] if " " in out else None


def start(pid: int, expect: str = "", grace: float = 15.0, env: dict | None = None,
          log_file: str | os.PathLike | None = None) -> subprocess.Popen:
    """Start a watchdog over ``pid``'s tree (``expect``: a string its command line must contain, against a
    reused PID). Keep the returned process until the tree is stopped, then :func:`release` it: if this
    program dies first, the watchdog stops the tree."""
    cmd = [sys.executable, "-I", str(Path(__file__).resolve()), "--pid", str(pid), "--grace", str(grace)]
    if expect:
        cmd += ["--expect", expect]
    with open(log_file or os.devnull, "a") as log:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd="/")


def release(watchdog: subprocess.Popen, timeout: float = 5.0) -> None:
    """Tell the watchdog the tree was stopped by us, so it exits without acting. Call it only after the
    stop succeeded: if we die before, the watchdog finishes the job."""
    with contextlib.suppress(OSError):  # BrokenPipe: it is gone already (its root was)
        watchdog.stdin.write(DONE + b"\n")
    with contextlib.suppress(OSError):
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def _log(message: str) -> None:
    print(f"[fedtt watchdog {time.strftime('%H:%M:%S')}] {message}", flush=True)


def watch(pid: int, expect: str = "", grace: float = 15.0, stream=None) -> str:
    """Block until ``stream`` (stdin) ends; stop ``pid``'s tree unless ``done`` came first. Returns what
    happened: ``released``, ``gone`` (the root had ended or is another process now) or ``stopped``."""
    stream = stream if stream is not None else sys.stdin.buffer
    ident = identity(pid)
    if ident is None or expect not in ident:
        _log(f"pid {pid} is not a running {expect or 'process'}: nothing to watch")
        return "gone"
    for line in stream:
        if line.strip() == DONE:
            return "released"
    # end of file without "done": the launcher died
    if identity(pid) != ident:
        _log(f"the launcher died; pid {pid} had ended already")
        return "gone"
    _log(f"the launcher died: stopping pid {pid} ({expect or ident}) and every process group under it")
    stop_tree(pid, lambda: identity(pid) == ident, grace)
    return "stopped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="the root of the tree to stop")
    parser.add_argument("--expect", default="", help="a string the root's command line must contain")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP):  # a closed terminal or a Ctrl-C is the launcher's business
        signal.signal(sig, signal.SIG_IGN)
    outcome = watch(args.pid, args.expect, args.grace)
    if outcome == "stopped":
        _log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
