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

import os
import shutil
import sys
import tempfile
from pathlib import Path

from .processes import APP_DIR, Processes, flower_bin, flwr_env, free_port, run_and_wait, wait_port


def simulate(
    num_supernodes: int = 10,
    run_config: dict | None = None,
    cpus_per_client: int = 1,
    gpus_per_client: float = 0.0,
    flwr_home: str | None = None,
    app_dir: Path = APP_DIR,
    timeout: float = 6 * 3600,
    stream: bool = True,
    ray_address: str | None = None,
) -> int:
    """Run the app as a Ray simulation through ``flwr run``; return 0 iff the run completed. ``ray_address``
    (``HOST:PORT`` of a running Ray head, or ``auto``): the simulation's ClientApps run on that existing Ray cluster
    (its head and worker nodes, started with ``ray start``) instead of a Ray started for this run alone."""
    home = Path(flwr_home) if flwr_home else Path(tempfile.mkdtemp(prefix="fedtt-flwr-home-"))
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    connection = "fedtt-local"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = flwr_env(home)
    if ray_address:  # ray.init() in the SuperLink's simulation process connects to it (Flower passes no address)
        env["RAY_ADDRESS"] = ray_address
        print(f"[fedtt] the simulation runs on the Ray cluster at {ray_address}", flush=True)
    log_file = home / "superlink.log"
    cmd = [flower_bin("flower-superlink"), "--insecure", "--simulation", "--port", str(port),
           "--control-api-address", f"127.0.0.1:{free_port()}", "--fleet-api-address", f"127.0.0.1:{free_port()}",
           "--disable-runtime-dependency-installation", "--database", str(home / "state.db")]
    print(f"[fedtt] starting a simulation SuperLink on 127.0.0.1:{port} (FLWR_HOME={home})", flush=True)
    ok = False
    try:
        with Processes() as procs:
            link = procs.start(cmd, env, log_file, home)
            wait_port(port, link)
            fed = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client} " \
                  f"client-resources-num-gpus={gpus_per_client}"
            status = run_and_wait(env, connection, run_config, timeout, app_dir, stream, ["--federation-config", fed])
            ok = status == "finished:completed"
            if not ok:
                print(f"[fedtt] the run did not complete; SuperLink log: {log_file}", file=sys.stderr, flush=True)
    finally:
        if ok and not flwr_home and os.environ.get("FEDTT_KEEP_FLWR_HOME") != "1":
            shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1
