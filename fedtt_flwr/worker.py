"""A long-lived training worker beside a SuperNode: the backbone, tokenizer and tokenized data stay loaded.

Flower (1.41/1.42) starts a new ClientApp process for every message; loading torch, the model and the node's
data every round cost more than the training itself. With ``worker="/path/worker.sock"`` in its node config the
ClientApp does not train: it hands the message and its Context to this worker over a Unix socket and returns
the worker's reply (:func:`forward`). The worker runs the very same :func:`fedtt_flwr.client.train` /
``evaluate`` in one process, so its caches (one backbone per run config, the tokenized partitions) live across
rounds and runs, and the round's protocol, validation, DP accounting and Context state are those of the
in-process path: the Context's state travels to the worker and back.

The channel: a Unix socket (never a network interface) with mode 0600 in a folder only its owner can enter;
the worker also checks the peer's uid (SO_PEERCRED, Linux) and a challenge-response HMAC on a per-node secret
(a 0600 file written beside the socket at first start). Requests are served one at a time (several runs share
the worker, each with its own cached model), others wait in the socket's backlog. Everything on the wire is
Flower's protobuf serialization of the Message and the Context (no pickle). This module imports neither torch
nor transformers at module level: the per-message ClientApp process stays light.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import struct
import sys
import time
import traceback
from pathlib import Path

from flwr.app import Context, Message

#: node-config keys: the worker's socket, and how long a message waits for a busy worker (seconds)
WORKER_KEY, WAIT_KEY = "worker", "worker-wait"
DEFAULT_WAIT_S = 3600.0
PROTOCOL = 1
_LEN = struct.Struct("!Q")
MAX_FRAME = 8 << 30  # 8 GiB: far above any adapter state, below a length a corrupt frame could claim


class WorkerError(RuntimeError):
    """The worker could not be reached, refused the caller, or failed the request (the message says which)."""


def secret_path(sock_path: str | os.PathLike) -> Path:
    return Path(str(sock_path) + ".secret")


def _send(sock: socket.socket, *frames: bytes) -> None:
    for frame in frames:
        sock.sendall(_LEN.pack(len(frame)) + frame)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the other side is too slow")
            sock.settimeout(left)
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, limit: int = MAX_FRAME, deadline: float | None = None) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size, deadline))
    if n > limit:
        raise ConnectionError(f"frame of {n} bytes announced where at most {limit} belong: not this protocol")
    return _recv_exact(sock, n, deadline)


def _json(frame: bytes) -> dict:
    value = json.loads(frame)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _mac(secret: bytes, role: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, role + nonce, hashlib.sha256).digest()


def code_digest() -> str:
    """This side's training code (the library and the strategies): worker and ClientApp must run the same."""
    global _CODE
    if _CODE is None:
        digest = hashlib.sha256()
        root = Path(__file__).resolve().parents[1]
        for path in sorted([*root.joinpath("fedtt_flwr").rglob("*.py"), *root.joinpath("strategies").glob("*.py")]):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
        _CODE = digest.hexdigest()[:16]
    return _CODE


_CODE: str | None = None


def check_private_folder(folder: Path) -> None:
    """The socket's folder belongs to this user and nobody else may enter it (else another user could have put a
    socket and a secret of their own there)."""
    info = folder.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(f"the worker's folder {folder} must belong to this user with mode 0700 "
                              f"(it is {stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}): chmod 700 {folder}")


def _private_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- the ClientApp side (light: no torch) ---------------------------------------------------------------------

def forward(kind: str, msg: Message, context: Context) -> Message:
    """Have the node's worker run ``kind`` ("train" or "evaluate") on ``msg``; its reply, and ``context.state``
    updated as the worker left it. Raises :class:`WorkerError` naming the socket when the worker is missing,
    busy past ``worker-wait``, refuses us, crashes or fails the request (Flower turns it into an error reply)."""
    from flwr.common.serde import context_to_proto, message_to_proto, recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    path = str(context.node_config[WORKER_KEY])
    wait = float(context.node_config.get(WAIT_KEY, DEFAULT_WAIT_S))
    _, (content, state) = _request(path, {"kind": kind}, message_to_proto(msg).SerializeToString(),
                                   context_to_proto(context).SerializeToString(), wait=wait)
    reply = Message(recorddict_from_proto(ProtoRecordDict.FromString(content)), reply_to=msg)
    new_state = recorddict_from_proto(ProtoRecordDict.FromString(state))
    for key in list(context.state.keys()):
        del context.state[key]
    for key, record in new_state.items():
        context.state[key] = record
    return reply


def status(path: str | os.PathLike, wait: float = 10.0) -> dict:
    """The worker's counters: requests served, backbones built, pid, uptime."""
    return _request(str(path), {"kind": "status"}, wait=wait)[0]


def _request(path: str, header: dict, *frames: bytes, wait: float) -> tuple[dict, list[bytes]]:
    """One request, authenticated both ways: the worker proves it holds the node's secret and runs as this user
    (and its folder is this user's alone) before anything of the node's is sent."""
    try:
        check_private_folder(Path(path).parent)
    except FileNotFoundError:
        raise WorkerError(f"training worker {path} is not running (no folder {Path(path).parent}): start it with "
                          f"`fedtt-flwr worker --socket {path}` (docs/deployment.md)") from None
    except PermissionError as e:
        raise WorkerError(f"training worker {path}: refused to use it: {e}") from None
    deadline = time.monotonic() + wait
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:  # a full queue refuses at once (EAGAIN): that is "busy", so wait as for a busy worker
            try:
                sock.settimeout(10)
                sock.connect(path)
                break
            except (BlockingIOError, InterruptedError):
                if time.monotonic() >= deadline:
                    raise WorkerError(f"training worker {path} stayed busy for {wait:.0f} s (node config "
                                      f"'{WAIT_KEY}')") from None
                time.sleep(0.5)
            except OSError as e:
                raise WorkerError(f"training worker {path} is not running ({e.strerror}): start it with "
                                  f"`fedtt-flwr worker --socket {path}` (docs/deployment.md)") from None
        if not _same_user(sock):
            raise WorkerError(f"training worker {path}: the process behind the socket runs as another user; refused")
        try:
            secret = secret_path(path).read_bytes()
        except OSError as e:
            raise WorkerError(f"training worker {path}: cannot read its secret {secret_path(path)} ({e.strerror}); "
                              "the worker and the SuperNode must run as the same user") from None
        try:
            nonce = _recv(sock, 64, deadline)  # a busy worker accepts us only after its current request
        except TimeoutError:
            raise WorkerError(f"training worker {path} stayed busy for {wait:.0f} s (node config "
                              f"'{WAIT_KEY}')") from None
        mine = secrets.token_bytes(32)
        _send(sock, _mac(secret, b"client", nonce), mine)
        verdict = _json(_recv(sock, 4096, time.monotonic() + 60))
        if not verdict.get("ok"):
            raise WorkerError(f"training worker {path}: {verdict.get('error', 'refused the connection')}")
        if not hmac.compare_digest(bytes.fromhex(str(verdict.get("proof", ""))), _mac(secret, b"worker", mine)):
            raise WorkerError(f"training worker {path}: the process behind the socket does not hold the node's "
                              "secret; refused")
        sock.settimeout(None)  # training takes as long as it takes; a crash closes the socket
        _send(sock, json.dumps({**header, "protocol": PROTOCOL, "code": code_digest()}).encode(), *frames)
        reply = _json(_recv(sock))
        if not reply.get("ok"):
            raise WorkerError(f"training worker {path}: {reply.get('error', 'refused the request')}")
        return reply, [_recv(sock) for _ in range(int(reply.get("frames", 0)))]
    except (ConnectionError, OSError, ValueError) as e:
        raise WorkerError(f"training worker {path} closed the connection before replying ({e}): it crashed or was "
                          "stopped; the next round works again once it is back") from None
    finally:
        sock.close()


# --- the worker ------------------------------------------------------------------------------------------------

class Worker:
    """Serves :func:`forward` requests on a Unix socket, one at a time, in this process."""

    def __init__(self, path: str | os.PathLike, log=None) -> None:
        self.path = Path(path).expanduser().resolve()
        self.log = log or (lambda text: print(f"[fedtt-worker] {text}", file=sys.stderr, flush=True))
        self.requests = self.failures = 0
        self.started = time.time()
        self.sock: socket.socket | None = None
        self.stopping = False
        self.run_id: int | None = None
        self.code = code_digest()
        self.handshake_s = 60.0

    def bind(self) -> None:
        """Create the owner-only folder, the secret (kept across restarts) and the 0600 socket."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_private_folder(folder)
        secret = secret_path(self.path)
        if not secret.exists():
            _private_file(secret, secrets.token_bytes(32))
        if stat.S_IMODE(secret.stat().st_mode) & 0o077:
            raise PermissionError(f"the worker's secret {secret} is readable by others: chmod 600 {secret}")
        if self.path.exists() or self.path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(2)
            try:
                probe.connect(str(self.path))
                raise RuntimeError(f"another worker is already serving {self.path}")
            except (ConnectionRefusedError, FileNotFoundError):
                self.path.unlink()  # a stale socket of a worker that died
            finally:
                probe.close()
        self.secret = secret.read_bytes()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self.sock = sock
        self.log(f"serving {self.path} (pid {os.getpid()})")

    def serve_forever(self) -> None:
        if self.sock is None:
            self.bind()
        try:
            while not self.stopping:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    if self.stopping:
                        break
                    raise
                with conn:
                    self.handle(conn)
        finally:
            self.close()

    def shutdown(self) -> None:
        """Stop serving after the current request (from another thread)."""
        self.stopping = True
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.path.unlink(missing_ok=True)

    def handle(self, conn: socket.socket) -> None:
        """Authenticate the peer (both ways), run its request, reply; nothing a peer sends stops the worker."""
        try:
            deadline = time.monotonic() + self.handshake_s  # the whole handshake, however slowly a peer trickles it
            if not _same_user(conn):
                self.log("refused a connection from another user")
                return
            nonce = secrets.token_bytes(32)
            _send(conn, nonce)
            mac, theirs = _recv(conn, 64, deadline), _recv(conn, 64, deadline)
            if not hmac.compare_digest(mac, _mac(self.secret, b"client", nonce)):
                self.log("refused a connection without the node's secret")
                _send(conn, json.dumps({"ok": False, "error": "refused: wrong secret"}).encode())
                return
            _send(conn, json.dumps({"ok": True, "proof": _mac(self.secret, b"worker", theirs).hex()}).encode())
            header = _json(_recv(conn, 1 << 16, deadline))
            kind = header.get("kind")
            if kind == "status":
                _send(conn, json.dumps({"ok": True, **self.counters()}).encode())
                return
            problem = None
            if header.get("protocol") != PROTOCOL or kind not in ("train", "evaluate"):
                problem = f"unknown request {str(header)[:200]}"
            elif header.get("code") != self.code:
                problem = ("the worker runs other training code than this run's app (the project was updated "
                           "or differs between them): restart the worker from the app's installation")
            if problem:
                _send(conn, json.dumps({"ok": False, "error": problem}).encode())
                return
            conn.settimeout(600)  # the request's frames: as fast as the ClientApp can send them
            msg_bytes, ctx_bytes = _recv(conn), _recv(conn)
        except Exception as e:  # noqa: BLE001 - a garbled or stalled peer costs its connection, never the worker
            self.log(f"dropped a connection: {type(e).__name__}: {e}")
            return
        self.requests += 1
        started = time.perf_counter()
        try:
            frames = self.run(kind, msg_bytes, ctx_bytes)
            reply = {"ok": True, "frames": len(frames)}
        except Exception as e:  # the ClientApp turns it into Flower's error reply
            self.failures += 1
            self.log(f"{kind} failed:\n{traceback.format_exc()}")
            frames, reply = [], {"ok": False, "error": f"{kind} failed: {type(e).__name__}: {e}"}
        try:
            conn.settimeout(600)  # a ClientApp that stopped reading does not hold the worker
            _send(conn, json.dumps(reply).encode(), *frames)
        except OSError as e:
            self.log(f"could not reply ({e}): the ClientApp went away")
        self.log(f"{kind} in {time.perf_counter() - started:.1f} s; {self.counters()}")

    def run(self, kind: str, msg_bytes: bytes, ctx_bytes: bytes) -> list[bytes]:
        from flwr.common.serde import context_from_proto, message_from_proto, recorddict_to_proto
        from flwr.proto.message_pb2 import Context as ProtoContext
        from flwr.proto.message_pb2 import Message as ProtoMessage

        from . import client

        msg = message_from_proto(ProtoMessage.FromString(msg_bytes))
        context = context_from_proto(ProtoContext.FromString(ctx_bytes))
        self.log(f"{kind} for run {context.run_id}, node {context.node_id}")
        if context.run_id != self.run_id:  # a node's files may have changed since the last run: read them again
            for cached in (client._task_data, client._partitioner, client._cached_share):
                cached.cache_clear()
            self.run_id = context.run_id
        reply = (client.train if kind == "train" else client.evaluate)(msg, context)
        return [recorddict_to_proto(reply.content).SerializeToString(),
                recorddict_to_proto(context.state).SerializeToString()]

    def counters(self) -> dict:
        loads = 0
        if "fedtt_flwr.client" in sys.modules:
            loads = sys.modules["fedtt_flwr.client"]._session.cache_info().misses
        return {"pid": os.getpid(), "requests": self.requests, "failures": self.failures, "model_loads": loads,
                "uptime_s": round(time.time() - self.started, 1)}


def _same_user(conn: socket.socket) -> bool:
    """The peer runs as this user (Linux SO_PEERCRED; elsewhere the socket's mode 0600 alone decides)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()
