"""The training worker beside a SuperNode: same results as training in the ClientApp, a channel only the node's
own ClientApp can use, clear errors when it is missing or dies, and the run going on."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client_app.app import app as client_app
from fedtt_flwr import worker
from fedtt_flwr.checkpoint import read_adapter
from fedtt_flwr.inprocess import InProcessGrid
from server_app.app import app as server_app


def serve(path) -> tuple[worker.Worker, threading.Thread]:
    w = worker.Worker(path, log=lambda text: None)
    w.bind()
    t = threading.Thread(target=w.serve_forever, daemon=True)
    t.start()
    return w, t


def stop(w: worker.Worker, t: threading.Thread) -> None:
    w.shutdown()
    t.join(10)
    assert not t.is_alive()


def run(tmp_path, model_dir, data_dir, name, node_config, app=client_app, **overrides):
    run_config = {"model": str(model_dir), "data-dir": str(data_dir), "output-dir": str(tmp_path / "runs"),
                  "num-server-rounds": 2, "local-steps": 3, "batch-size": 8, "max-length": 16, "min-clients": 2,
                  "fraction-evaluate": 1.0, "run-name": name, **overrides}
    grid = InProcessGrid(app, 2, run_config, node_config=node_config)
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    folder = tmp_path / "runs" / name
    return grid, [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()], folder


def partition(i, **extra):
    return {"partition-id": i, "num-partitions": 2, **extra}


def test_a_run_through_the_worker_equals_one_in_the_clientapp(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """Local DP on: the node's accountant state lives in its Context, which travels to the worker and back."""
    sock = tmp_path / "w" / "worker.sock"
    w, t = serve(sock)
    try:
        dp = {"dp": "sigma", "dp-noise-multiplier": 1.0}
        grid_w, via_worker, folder_w = run(tmp_path, tiny_model_dir, tiny_sst2_dir, "worker",
                                           lambda i: partition(i, worker=str(sock)), **dp)
        grid_c, in_app, folder_c = run(tmp_path, tiny_model_dir, tiny_sst2_dir, "clientapp", partition, **dp)
        counters = worker.status(sock)
    finally:
        stop(w, t)
    for a, b in zip(via_worker, in_app, strict=True):
        for key in ("train_loss", "fed_accuracy", "dp_epsilon_max", "replies", "errors", "bytes_up"):
            assert a.get(key) == b.get(key), key
    assert via_worker[-1]["replies"] == 2 and via_worker[-1]["errors"] == 0 and via_worker[-1]["dp_epsilon_max"] > 0
    arrays_w, arrays_c = (read_adapter(f / "adapter.safetensors")[0] for f in (folder_w, folder_c))
    assert arrays_w.keys() == arrays_c.keys() and all(np.array_equal(arrays_w[k], arrays_c[k]) for k in arrays_w)
    for nid in grid_w.node_ids:  # the DP history came back into the node's Context, as in the ClientApp
        assert grid_w.contexts[nid].state["fedtt-dp"]["steps"] == grid_c.contexts[nid].state["fedtt-dp"]["steps"]
        assert len(grid_w.contexts[nid].state["fedtt-dp"]["steps"]) == 2
    assert counters["requests"] == 2 * 2 * 2 and counters["failures"] == 0  # 2 rounds x 2 nodes x train+evaluate


def test_a_missing_worker_is_an_error_reply_and_the_next_round_works_once_it_is_back(tmp_path, tiny_model_dir,
                                                                                     tiny_sst2_dir):
    sock = tmp_path / "w" / "worker.sock"
    errors: list[str] = []
    started: list = []

    def node(msg, ctx):
        if int(msg.content["config"].get("server-round", 0)) == 2 and not started:
            started.append(serve(sock))  # the operator restarts the worker between rounds 1 and 2
        try:
            return client_app(msg, ctx)
        except Exception as exc:
            errors.append(str(exc))
            raise

    try:
        _, lines, _ = run(tmp_path, tiny_model_dir, tiny_sst2_dir, "restart", lambda i: partition(i, worker=str(sock)),
                          app=node, **{"allow-node-errors": True})
    finally:
        for w, t in started:
            stop(w, t)
    assert [(x["replies"], x["errors"]) for x in lines[1:]] == [(0, 2), (2, 0)]
    assert errors and all(f"training worker {sock} is not running" in e and "fedtt-flwr worker" in e for e in errors)


class _Crash(BaseException):
    """What dies with the worker's process: raised past every handler, closing the connection unanswered."""


class CrashingWorker(worker.Worker):
    def run(self, kind, msg_bytes, ctx_bytes):
        raise _Crash


def test_a_worker_dying_mid_request_is_a_clear_error(tmp_path, tiny_model_dir, tiny_sst2_dir):
    sock = tmp_path / "w" / "worker.sock"
    w = CrashingWorker(sock, log=lambda text: None)
    w.bind()
    thread = threading.Thread(target=lambda: pytest.raises(_Crash, w.serve_forever), daemon=True)
    thread.start()
    errors = []

    def node(msg, ctx):
        try:
            return client_app(msg, ctx)
        except Exception as exc:
            errors.append(str(exc))
            thread.join(10)  # the crash closes this connection before the listener is gone: let it finish dying
            raise

    with pytest.raises(RuntimeError, match="no round trained"):  # the run ends, keeping its folder
        run(tmp_path, tiny_model_dir, tiny_sst2_dir, "crash", lambda i: partition(i, worker=str(sock)), app=node,
            **{"num-server-rounds": 1, "allow-node-errors": True})
    thread.join(10)
    lines = [json.loads(x) for x in (tmp_path / "runs" / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["errors"] == 2 and lines[1]["replies"] == 0
    assert "closed the connection before replying" in errors[0] and "crashed" in errors[0]
    assert all("is not running" in e for e in errors[1:])  # dead, its socket gone: the second node is told so
    assert not sock.exists()


def test_only_the_nodes_own_clientapp_gets_in(tmp_path):
    sock = tmp_path / "w" / "worker.sock"
    w, t = serve(sock)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(worker.secret_path(sock).stat().st_mode) == 0o600
        assert worker.status(sock)["requests"] == 0
        secret = worker.secret_path(sock).read_bytes()
        worker.secret_path(sock).write_bytes(b"x" * 32)  # a caller without the node's secret
        with pytest.raises(worker.WorkerError, match="refused: wrong secret"):
            worker.status(sock)
        worker.secret_path(sock).write_bytes(secret)
        assert worker.status(sock)["failures"] == 0  # refusing did not stop it
        with pytest.raises(RuntimeError, match="already serving"):
            worker.Worker(sock).bind()
    finally:
        stop(w, t)
    assert not sock.exists()


@pytest.mark.skipif(not hasattr(os, "setuid") or os.getuid() != 0, reason="needs root to act as another user")
def test_a_process_of_another_user_cannot_connect(tmp_path):
    sock = tmp_path / "w" / "worker.sock"
    os.chmod(tmp_path, 0o755)  # the other user may walk up to the folder, which itself stays 0700
    w, t = serve(sock)
    try:
        code = ("import os, socket, sys\nos.setgid(65534); os.setuid(65534)\ns = socket.socket(socket.AF_UNIX)\n"
                f"try:\n    s.connect({str(sock)!r})\nexcept PermissionError:\n    sys.exit(3)\nsys.exit(0)")
        assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 3
        assert worker.status(sock)["requests"] == 0
    finally:
        stop(w, t)


def test_a_folder_others_can_enter_is_refused(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    with pytest.raises(PermissionError, match="chmod 700"):
        worker.Worker(folder / "worker.sock").bind()


def test_the_clientapp_hand_off_does_not_import_torch():
    code = "import sys, client_app.app, fedtt_flwr.worker; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_the_server_collects_replies_that_arrive_late_and_stops_at_the_timeout():
    """The server's pull loop (it replaced Flower's fixed 3 s wait): replies that trickle in are all collected;
    a node that never answers ends the wait at the timeout with the replies there are."""
    import time

    from flwr.app import ConfigRecord, Message, RecordDict

    from fedtt_flwr.server import exchange

    class SlowGrid(InProcessGrid):
        """Node i's reply becomes visible only i pulls after the push; node ``silent`` never replies."""

        def __init__(self, silent=None):
            super().__init__(lambda m, c: Message(RecordDict({"c": ConfigRecord({"ok": 1})}), reply_to=m), 3)
            self.silent, self.pulls, self.due = silent, 0, {}

        def push_messages(self, messages):
            ids = list(super().push_messages(messages))
            self.due = {mid: i for i, mid in enumerate(ids) if i != self.silent}
            return ids

        def pull_messages(self, message_ids):
            self.pulls += 1
            ready = [mid for mid in message_ids if self.due.get(mid, 10**9) < self.pulls]
            return super().pull_messages(ready)

    def messages(grid):
        return [grid.create_message(RecordDict({"config": ConfigRecord({"server-round": 1})}), "train", nid, "1")
                for nid in grid.node_ids]

    grid = SlowGrid()
    replies = exchange(grid, messages(grid), timeout=60)
    assert sorted(r.metadata.src_node_id for r in replies) == grid.node_ids and grid.pulls == 3
    grid = SlowGrid(silent=1)
    started = time.monotonic()
    replies = exchange(grid, messages(grid), timeout=1.0)
    assert 1.0 <= time.monotonic() - started < 5 and len(replies) == 2


def test_runs_of_different_methods_share_one_worker_safely(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """A LoRA run between two identical FedTT runs on the same worker: the second FedTT run ends exactly where the
    first did (each run config gets its own cached model; nothing of one run leaks into the other)."""
    sock = tmp_path / "w" / "worker.sock"
    w, t = serve(sock)
    try:
        node = lambda i: partition(i, worker=str(sock))  # noqa: E731
        _, first, folder_a = run(tmp_path, tiny_model_dir, tiny_sst2_dir, "fedtt-a", node)
        _, lora, _ = run(tmp_path, tiny_model_dir, tiny_sst2_dir, "lora", node, method="lora")
        _, second, folder_b = run(tmp_path, tiny_model_dir, tiny_sst2_dir, "fedtt-b", node)
    finally:
        stop(w, t)
    assert lora[-1]["replies"] == 2 and lora[-1]["errors"] == 0 and lora[-1]["method"] == "lora"
    assert [x["train_loss"] for x in first] == [x["train_loss"] for x in second]
    a, b = (read_adapter(f / "adapter.safetensors")[0] for f in (folder_a, folder_b))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def _raw(sock_path, *frames, secret=None):
    """A peer speaking the wire protocol by hand: authenticates with ``secret`` when given, sends ``frames``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(sock_path))
    nonce = worker._recv(s)
    if secret is not None:
        worker._send(s, worker._mac(secret, b"client", nonce), b"n" * 32)
        assert json.loads(worker._recv(s))["ok"]
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the worker may hang up on an oversized frame
        worker._send(s, *frames)
    return s


def test_nothing_a_peer_sends_stops_the_worker(tmp_path):
    sock = tmp_path / "w" / "worker.sock"
    w, t = serve(sock)
    w.handshake_s = 1.0
    secret = worker.secret_path(sock).read_bytes()
    try:
        for header in (b"[]", b"null", b"[" * 100_000 + b"]" * 100_000, b"not json", b'{"kind": "train"}'):
            _raw(sock, header, secret=secret).close()
        _raw(sock, worker._LEN.pack(1 << 40)[:4]).close()  # half a length, then gone
        huge = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # announces 8 GiB before authenticating
        huge.connect(str(sock))
        worker._recv(huge)
        huge.sendall(worker._LEN.pack(worker.MAX_FRAME))
        slow = _raw(sock, b"")  # an empty MAC, then nothing: the handshake deadline drops it
        assert worker.status(sock, wait=20)["failures"] == 0 and t.is_alive()
        huge.close()
        slow.close()
        code = _raw(sock, json.dumps({"kind": "train", "protocol": worker.PROTOCOL, "code": "0" * 16}).encode(),
                    secret=secret)
        assert "other training code" in json.loads(worker._recv(code))["error"]
        code.close()
        assert t.is_alive() and worker.status(sock)["requests"] == 0
    finally:
        stop(w, t)


def test_the_clientapp_only_talks_to_the_real_worker(tmp_path):
    """A socket in a folder others can write to, or a process that cannot prove it holds the node's secret, gets
    nothing of the node's."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(worker.WorkerError, match="refused to use it.*chmod 700"):
        worker.status(shared / "worker.sock")
    folder = tmp_path / "impostor"
    folder.mkdir(mode=0o700)
    path = folder / "worker.sock"
    (folder / "worker.sock.secret").write_bytes(b"k" * 32)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    got = []

    def impostor():  # knows the protocol, not the secret: answers with a made-up proof
        conn, _ = listener.accept()
        worker._send(conn, b"x" * 32)
        got.extend([worker._recv(conn), worker._recv(conn)])  # the caller's MAC and its challenge
        worker._send(conn, json.dumps({"ok": True, "proof": "00" * 32}).encode())
        conn.settimeout(2)
        with contextlib.suppress(OSError, ConnectionError):
            got.append(worker._recv(conn))
        conn.close()

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    with pytest.raises(worker.WorkerError, match="does not hold the node's secret"):
        worker.status(path)
    thread.join(10)
    listener.close()
    assert len(got) == 2  # the handshake only: no request, no message, no Context


def test_a_new_run_reads_the_nodes_files_again(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """The worker outlives runs: a file the node replaced between two runs is read anew, not served from memory."""
    rows = (tiny_sst2_dir / "glue" / "SST-2" / "train.tsv").read_text().splitlines()[1:]
    names = {"0": "negative", "1": "positive"}

    def write(n):
        (tmp_path / "train.csv").write_text("text,label\n" + "".join(
            f'"{t}",{names[y]}\n' for t, y in (line.split("\t") for line in rows[:n])))

    sock = tmp_path / "w" / "worker.sock"
    w, t = serve(sock)
    seen = []

    def node(msg, ctx):
        reply = client_app(msg, ctx)
        if msg.metadata.message_type == "train":
            seen.append(int(next(iter(reply.content.metric_records.values()))["num-examples"]))
        return reply

    try:
        for run_id, n in ((1, 40), (2, 24)):
            write(n)
            run_config = {"model": str(tiny_model_dir), "task": "custom", "labels": "negative,positive",
                          "output-dir": str(tmp_path / "runs"), "num-server-rounds": 1, "local-steps": 1,
                          "batch-size": 8, "max-length": 16, "min-clients": 1, "central-eval": False,
                          "run-name": f"run{run_id}"}
            grid = InProcessGrid(node, 1, run_config, node_config=lambda i: {"train-file": str(tmp_path / "train.csv"),
                                                                             "worker": str(sock)})
            for ctx in grid.contexts.values():
                ctx.run_id = run_id
            server_app(grid, Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=run_config))
    finally:
        stop(w, t)
    assert seen == [40, 24]
