"""docs/deployment.md followed literally on one machine: the guide's own commands, read from its bash blocks,
with 127.0.0.1 for the server's names, temporary folders for its paths and a free port for 9200 (the only
changes a reader trying it on one machine makes). Two SuperNodes on one host (one with its own folder holding
only a train file, one on a partition of a shared folder), a key rotation, a server-certificate renewal and a
SuperLink restart that both nodes survive, then a run through ``deploy run``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedtt_flwr.deploy import certificate_hosts, online_nodes
from fedtt_flwr.processes import OFFLINE_ENV, Processes, free_port, stop_process, wait_port
from fedtt_flwr.worker import status

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"


def guide_commands() -> list[str]:
    """Every command of the guide's bash blocks, in order: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", "", "\n".join(line.strip() for line in block.splitlines()))
        commands += [line for line in joined.splitlines() if line and not line.startswith("#")]
    return commands


def the(commands: list[str], *words: str) -> str:
    """The one guide command that holds all ``words``: the test fails if the guide stops showing it."""
    found = [c for c in commands if all(w in c for w in words)]
    assert len(found) == 1, f"the guide should show exactly one command with {words}: {found}"
    return found[0]


def _wait(condition, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1.0)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


def test_the_deployment_guide_runs_as_written_on_one_machine(tmp_path, tiny_model_dir, tiny_sst2_dir):
    port = free_port()
    own = tmp_path / "hospital-a-data"  # "its own folder ...: all of it is this node's training data"
    (own / "glue" / "SST-2").mkdir(parents=True)
    shutil.copy(tiny_sst2_dir / "glue" / "SST-2" / "train.tsv", own / "glue" / "SST-2" / "train.tsv")
    places = {"fl.example.org:9200": f"127.0.0.1:{port}", "fl.example.org": "127.0.0.1", "10.0.0.5": "127.0.0.1",
              "/var/lib/fedtt": str(tmp_path / "var"), "/data/hospital-a": str(own),
              "/mnt/shared/glue-data": str(tiny_sst2_dir), "/run/fedtt": str(tmp_path / "run")}

    def local(cmd: str) -> str:
        for guide_value, here in places.items():
            cmd = cmd.replace(guide_value, here)
        return cmd

    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "FLWR_HOME"}, **OFFLINE_ENV, "HOME": str(home),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    cli_env = {**env, "FLWR_HOME": str(home / ".fedtt-flwr" / "cli")}

    def run(cmd: str, timeout: float = 120) -> str:
        out = subprocess.run(["bash", "-c", local(cmd)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    guide = guide_commands()
    certs = the(guide, "deploy certs", "--host fl.example.org")
    node_key = the(guide, "deploy node-key", "hospital-a")
    superlink = the(guide, "deploy superlink", "--state") + " --host 127.0.0.1 --port " + str(port)
    register = the(guide, "deploy register", "hospital-a.pub", "hospital-b.pub")
    worker_a = the(guide, "fedtt-flwr worker --socket", "hospital-a")
    node_a = the(guide, "deploy supernode", "keys/hospital-a", "--data-dir /data/hospital-a", "--worker")
    node_b = the(guide, "deploy supernode", "keys/hospital-b", "--partition-id 1")
    deploy_run = the(guide, "deploy run")
    unregister = the(guide, "flwr supernode unregister NODE_ID")
    new_key = the(guide, "deploy node-key", "--overwrite")
    register_b = the(guide, "deploy register", "ca.crt keys/hospital-b.pub")
    renew = the(guide, "deploy certs", "--renew-server")

    assert "127.0.0.1" in run(certs)
    run(node_key)
    run(node_key.replace("hospital-a", "hospital-b"))  # step 2 on the second client machine
    with Processes() as procs:
        def start(cmd: str, name: str) -> subprocess.Popen:
            return procs.start(["bash", "-c", "exec " + local(cmd)], env, tmp_path / f"{name}.log", tmp_path)

        link = start(superlink, "superlink")
        wait_port(port, link)
        ids = dict(re.findall(r"keys/(hospital-[ab])\.pub: node (\d+)", run(register)))
        assert set(ids) == {"hospital-a", "hospital-b"}
        sock = tmp_path / "run" / "hospital-a" / "worker.sock"
        worker = start(worker_a, "worker-a")
        _wait(lambda: sock.exists() or worker.poll() is not None, 120, "the worker's socket")
        nodes = {"hospital-a": start(node_a, "hospital-a"), "hospital-b": start(node_b, "hospital-b")}
        _wait(lambda: online_nodes(cli_env, "fedtt-deploy") >= set(ids.values()), 120, "both SuperNodes online")

        run(unregister.replace("NODE_ID", ids["hospital-b"]))  # rotation: the online node is shut down
        assert nodes["hospital-b"].wait(timeout=120) is not None
        old_key = (tmp_path / "keys" / "hospital-b.pub").read_text()
        run(new_key)
        assert (tmp_path / "keys" / "hospital-b.pub").read_text() != old_key
        ids["hospital-b"] = re.search(r"node (\d+)", run(register_b)).group(1)
        nodes["hospital-b"] = start(node_b, "hospital-b-rotated")
        _wait(lambda: online_nodes(cli_env, "fedtt-deploy") >= set(ids.values()), 120, "the rotated node online")

        run(renew)
        assert {"127.0.0.1", "localhost"} <= set(certificate_hosts(tmp_path / "certs" / "server.pem"))
        stop_process(link)  # restart the SuperLink with the new certificate and the same state
        link = start(superlink, "superlink-restarted")
        wait_port(port, link)
        _wait(lambda: online_nodes(cli_env, "fedtt-deploy") >= set(ids.values()), 180,
              "both SuperNodes back after the SuperLink restart")
        assert all(node.poll() is None for node in nodes.values())

        tiny = (f" --set model={tiny_model_dir} --set num-server-rounds=1 --set min-clients=2 --set local-steps=2"
                " --set batch-size=8 --set max-length=16 --set run-name=guide")
        out = run(deploy_run + tiny, timeout=600)
        counters = status(sock)
    assert "finished:completed" in out, out
    folder = tmp_path / "var" / "runs" / "guide"
    assert f"results: {folder}/" in out
    last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["round"], last["replies"], last["errors"]) == (1, 2, 0), last
    assert counters["model_loads"] == 1 and counters["requests"] >= 1 and counters["failures"] == 0  # hospital-a's
    assert str(tmp_path) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("words", [("--port 9095",), ("--host 127.0.0.1",), ("certs/ca.crt",)])
def test_the_guide_names_what_a_one_machine_reader_needs(words):
    assert all(w in GUIDE.read_text() for w in words)
