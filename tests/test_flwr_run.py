"""The real `flwr run` path: a simulation SuperLink, Ray, 3 SuperNodes, a tiny model (about a minute)."""

from __future__ import annotations

import json
import subprocess

from fedtt_flwr.launch import simulate


def _config(tmp_path, model_dir, data_dir, **extra):
    return {"model": str(model_dir), "data-dir": str(data_dir), "output-dir": str(tmp_path / "runs"),
            "num-server-rounds": 2, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 3,
            "method": "fedtt+", "run-name": "smoke", **extra}


def _superlinks_running(home) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any("flower-superlink" in line and str(home) in line for line in out.splitlines())


def test_flwr_run_completes_and_writes_metrics(tmp_path, tiny_model_dir, tiny_sst2_dir):
    home = tmp_path / "flwr-home"
    code = simulate(num_supernodes=3, run_config=_config(tmp_path, tiny_model_dir, tiny_sst2_dir),
                    flwr_home=str(home), stream=False, timeout=600)
    assert code == 0
    lines = [json.loads(x) for x in (tmp_path / "runs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2]
    assert all(x["replies"] == 3 and x["bytes_up"] > 0 for x in lines[1:])
    assert (tmp_path / "runs" / "smoke" / "adapter.safetensors").exists()
    assert not _superlinks_running(home), "the SuperLink we started must be stopped"


def test_a_failed_run_is_reported_as_failure(tmp_path, tiny_sst2_dir):
    home = tmp_path / "flwr-home"
    config = _config(tmp_path, tmp_path / "no-such-model", tiny_sst2_dir)
    code = simulate(num_supernodes=3, run_config=config, flwr_home=str(home), stream=False, timeout=600)
    assert code == 1  # flwr run itself exits 0 here; the launcher reads the run's final status
    assert not _superlinks_running(home)


def test_stop_kills_what_the_superlink_started_in_other_sessions(tmp_path):
    """flower-superexec runs the simulation (and Ray) in a session of its own: stopping the SuperLink's
    process group alone left them running after an interrupted run (seen, then reproduced)."""
    import os
    import sys
    import time

    from fedtt_flwr.processes import stop_process as _stop

    pid_file = tmp_path / "grandchild.pid"
    # a stand-in SuperLink that starts a long-lived child in a new session, as superexec does
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)")
    link = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert os.getpgid(grandchild) != os.getpgid(link.pid)  # really another group
    _stop(link)
    time.sleep(0.5)
    assert link.poll() is not None
    stat = subprocess.run(["ps", "-o", "stat=", "-p", str(grandchild)], capture_output=True, text=True).stdout.strip()
    assert stat == "" or stat.startswith("Z"), f"the grandchild survived (ps stat {stat!r})"  # gone or a zombie


def test_clients_of_different_ranks_through_flwr_run(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """The rank query (a Flower ``query`` message) and per-node shapes through the real SuperLink and Ray."""
    home = tmp_path / "flwr-home"
    config = _config(tmp_path, tiny_model_dir, tiny_sst2_dir, method="fedtt", **{"node-ranks": "2,5,3"})
    assert simulate(num_supernodes=3, run_config=config, flwr_home=str(home), stream=False, timeout=600) == 0
    lines = [json.loads(x) for x in (tmp_path / "runs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["replies"], x["errors"], x["rejected"]) for x in lines[1:]] == [(3, 0, 0), (3, 0, 0)]


def _ray_nodes(ray: str, address: str) -> int:
    """Alive nodes of the Ray cluster at ``address`` (0 while it does not answer)."""
    out = subprocess.run([ray, "status", f"--address={address}"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return 0
    active = out.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


def test_a_simulation_on_an_existing_ray_cluster(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """`simulate --ray-address`: a Ray head with no CPU and a worker node with 2 (both started here with `ray start
    --block` and stopped by their process groups), so every ClientApp can only run on the worker node."""
    import os
    import shutil
    import signal
    import sys
    import tempfile
    import time
    from pathlib import Path

    from fedtt_flwr.processes import free_port

    ray = str(Path(sys.executable).parent / "ray")
    address = f"127.0.0.1:{free_port()}"
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX's 107 bytes
    common = ["--block", "--disable-usage-stats"]
    starts = [[ray, "start", "--head", f"--port={address.split(':')[1]}", "--num-cpus=0", f"--temp-dir={temp}",
               "--include-dashboard=false", f"--ray-client-server-port={free_port()}", *common],
              [ray, "start", f"--address={address}", "--num-cpus=2", *common]]
    procs = []
    try:
        for nodes, cmd in enumerate(starts, start=1):
            log = open(tmp_path / f"ray-{nodes}.log", "w")  # noqa: SIM115 - lives as long as the process
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            deadline = time.time() + 120
            while _ray_nodes(ray, address) < nodes:
                assert time.time() < deadline and procs[-1].poll() is None, (tmp_path / f"ray-{nodes}.log").read_text()
                time.sleep(1)
        config = _config(tmp_path, tiny_model_dir, tiny_sst2_dir, method="fedtt")
        code = simulate(num_supernodes=3, run_config=config, flwr_home=str(tmp_path / "flwr-home"), stream=False,
                        timeout=600, ray_address=address)
        assert code == 0
        lines = [json.loads(x) for x in (tmp_path / "runs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
        assert [(x["replies"], x["errors"]) for x in lines[1:]] == [(3, 0), (3, 0)]
        assert _ray_nodes(ray, address) == 2, "the cluster outlives the run: it is not the simulation's own"
        logs = Path(temp) / "session_latest" / "logs"  # the cluster's own logs hold the run's ClientApp actors
        assert any("ClientAppActor" in p.read_text(errors="replace") for p in logs.glob("worker-*.out"))
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
