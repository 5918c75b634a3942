"""Deployment helpers: certificates, SuperNode keys and the commands that start a secure federation.

A real federation is one SuperLink (server machine) and N SuperNodes (client machines, each with its own
data). Flower secures it with TLS (the SuperLink presents a certificate signed by a CA that every
SuperNode and the CLI trust) and, with ``--enable-supernode-auth``, only lets in SuperNodes whose EC
public key an operator registered (``flwr supernode register``). This module makes those files with the
``cryptography`` package (no openssl needed) and builds the exact command lines, so the docs, the CLI
and the loopback test all start the same thing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .processes import Processes, flower_bin, flwr_env, free_port, run_and_wait, wait_port

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"


def _write_private(path: Path, data: bytes) -> None:
    """Private keys are written readable by their owner only."""
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


#: names every SuperLink certificate holds: listening on 0.0.0.0, the SuperLink dials its own SuperExec at
#: 127.0.0.1, which must pass the same TLS check (without them, it dies after a restart)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def certificate_hosts(path: Path) -> list[str]:
    """The names and IPs a certificate is valid for (its subject alternative names)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def make_certificates(out_dir: str | os.PathLike, hosts: list[str], days: int = 365,
                      overwrite: bool = False, renew_server: bool = False, keep_hosts: bool = True) -> dict[str, Path]:
    """A CA and a SuperLink certificate valid for ``hosts`` (the names/IPs SuperNodes will dial), plus
    :data:`LOOPBACK_HOSTS`.

    The CA key stays on the operator's machine; ``ca.crt`` goes to every SuperNode and CLI user;
    ``server.pem``/``server.key`` go to the SuperLink only. ``renew_server`` signs a new server
    certificate with the existing CA (rotation without touching any SuperNode); it keeps the names of the
    certificate it replaces (``keep_hosts``), so a renewal that names one host does not drop the others."""
    out = Path(out_dir)
    old_server = out / SERVER_CERT
    if renew_server and keep_hosts and old_server.exists():
        hosts = [*certificate_hosts(old_server), *hosts]
    if not hosts:
        raise ValueError("make_certificates: give at least one host name or IP address for the SuperLink")
    hosts = list(dict.fromkeys([*hosts, *LOOPBACK_HOSTS]))
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)}
    now = dt.datetime.now(dt.timezone.utc)
    valid_from, valid_to = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    pem = serialization.Encoding.PEM
    pkcs8 = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                 encryption_algorithm=serialization.NoEncryption())
    if renew_server:
        missing = [str(paths[n]) for n in (CA_CERT, CA_KEY) if not paths[n].exists()]
        if missing:
            raise FileNotFoundError(f"renewing the server certificate needs the CA: missing {', '.join(missing)}")
        ca_cert = x509.load_pem_x509_certificate(paths[CA_CERT].read_bytes())
        ca_key = serialization.load_pem_private_key(paths[CA_KEY].read_bytes(), password=None)
        ca_name = ca_cert.subject
    else:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"certificates already exist ({', '.join(existing)}); pass overwrite=True "
                                  "(--overwrite) to replace them, which breaks every node that trusts the old CA, "
                                  "or renew_server=True (--renew-server) to keep the CA")
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtt-flwr CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(valid_from).not_valid_after(valid_to)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA384()))
        paths[CA_CERT].write_bytes(ca_cert.public_bytes(pem))
        _write_private(paths[CA_KEY], ca_key.private_bytes(**pkcs8))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(valid_from).not_valid_after(valid_to)
                   .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA384()))

    paths[SERVER_CERT].write_bytes(server_cert.public_bytes(pem))
    _write_private(paths[SERVER_KEY], server_key.private_bytes(**pkcs8))
    return paths


def make_node_key(out_dir: str | os.PathLike, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """An EC (NIST P-384) key pair for one SuperNode, in the OpenSSH format Flower reads:
    ``<name>`` (private, stays on the node) and ``<name>.pub`` (registered on the SuperLink)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"make_node_key: {name!r} is not a usable key name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / name, out / f"{name}.pub"
    if (private.exists() or public.exists()) and not overwrite:
        raise FileExistsError(f"a key named {name!r} already exists in {out}; pick another name or overwrite")
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


DEFAULT_PORT = 9200


def superlink_command(cert_dir: str | os.PathLike, state_dir: str | os.PathLike, port: int = DEFAULT_PORT,
                      host: str = "0.0.0.0", auth: bool = True, exe: str = "flower-superlink") -> list[str]:
    """``flower-superlink`` with TLS (and SuperNode authentication unless ``auth=False``). Since Flower
    1.41 one HTTPS port serves SuperNodes (Fleet API), the CLI (Control API) and the ServerApp."""
    c = Path(cert_dir).expanduser().resolve()
    cmd = [exe, "--ssl-ca-certfile", str(c / CA_CERT), "--ssl-certfile", str(c / SERVER_CERT),
           "--ssl-keyfile", str(c / SERVER_KEY), "--host", host, "--port", str(port),
           "--database", str(Path(state_dir).expanduser().resolve() / "state.db"),
           "--disable-runtime-dependency-installation"]
    return cmd + (["--enable-supernode-auth"] if auth else [])


def node_config(data_dir: str | None = None, partition_id: int | None = None,
                num_partitions: int | None = None, train_file: str | None = None, dev_file: str | None = None,
                worker: str | os.PathLike | None = None) -> str:
    """The ``--node-config`` string of a SuperNode: its own data folder or files (a custom task), or a partition
    of a shared folder; with ``worker`` its ClientApp hands every message to that training worker's socket."""
    items = [f'worker="{Path(worker).expanduser().resolve()}"'] if worker else []
    if data_dir:
        items.append(f'data-dir="{Path(data_dir).expanduser().resolve()}"')
    for key, value in (("train-file", train_file), ("dev-file", dev_file)):
        if value:
            items.append(f'{key}="{Path(value).expanduser().resolve()}"')
    if partition_id is not None:
        items.append(f"partition-id={int(partition_id)}")
    if num_partitions is not None:
        items.append(f"num-partitions={int(num_partitions)}")
    if len(items) == bool(worker):
        raise ValueError("a SuperNode needs its data: a data folder, or a partition-id and num-partitions")
    return " ".join(items)


def supernode_command(superlink: str, ca_cert: str | os.PathLike, private_key: str | os.PathLike | None,
                      node_cfg: str, port: int = 9094, exe: str = "flower-supernode",
                      max_retries: int | None = None) -> list[str]:
    """``flower-supernode`` dialing ``superlink`` (host:port) over TLS, signing with its key. It retries a
    lost connection forever unless ``max_retries`` is given."""
    cmd = [exe, "--superlink", superlink, "--root-certificates", str(Path(ca_cert).expanduser().resolve()),
           "--node-config", node_cfg, "--port", str(port)]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if private_key:
        cmd += ["--auth-supernode-private-key", str(Path(private_key).expanduser().resolve())]
    return cmd


def worker_command(sock: str | os.PathLike) -> list[str]:
    """``fedtt-flwr worker``: the node's long-lived training process, serving its ClientApps on ``sock``."""
    return [sys.executable, "-m", "fedtt_flwr.cli", "worker", "--socket", str(Path(sock).expanduser().resolve())]


def start_worker(procs: Processes, sock: Path, env: dict, log_file: Path, timeout: float = 300) -> dict:
    """Start a training worker under ``procs`` and wait until it answers on ``sock``; its status."""
    from .worker import WorkerError, status

    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.parent.chmod(0o700)  # the worker refuses a folder others can enter
    proc = procs.start(worker_command(sock), env, log_file, sock.parent)

    def ready() -> dict | None:
        if proc.poll() is not None:
            raise RuntimeError(f"the training worker exited at start-up with code {proc.returncode}: "
                               f"{log_file.read_text()[-2000:]}")
        try:
            return status(sock)
        except WorkerError:
            return None

    return _wait(ready, timeout, f"the training worker did not answer on {sock}", interval=0.5)


def cli_connection(name: str, address: str, ca_cert: str | os.PathLike) -> str:
    """A ``config.toml`` block for ``$FLWR_HOME``: the CLI's connection to the SuperLink's Control API."""
    return (f'[superlink.{name}]\naddress = "{address}"\n'
            f'root-certificates = "{Path(ca_cert).expanduser().resolve()}"\n')


# --- running a federation (the CLI's `deploy` commands and the loopback test use these) -------------------

def write_cli_home(home: str | os.PathLike, connection: str, address: str, ca_cert: str | os.PathLike) -> Path:
    """A ``FLWR_HOME`` for the CLI whose default connection is the SuperLink at ``address``."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{connection}"\n\n'
                                      + cli_connection(connection, address, ca_cert))
    return home


def _flwr_json(args: list[str], env: dict) -> dict:
    out = subprocess.run([flower_bin("flwr"), *args, "--format", "json"], env=env, capture_output=True, text=True,
                         timeout=120)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"success": False, "error-message": (out.stdout + out.stderr).strip()[-500:]}


def register_node(public_key: str | os.PathLike, cli_env: dict, connection: str) -> str:
    """Register a SuperNode's public key on the SuperLink (``flwr supernode register``); its node id."""
    reply = _flwr_json(["supernode", "register", str(public_key), connection], cli_env)
    if not reply.get("success"):
        raise RuntimeError(f"registering {public_key} failed: {reply.get('error-message', reply)}")
    return str(reply["node-id"])


def online_nodes(cli_env: dict, connection: str) -> set[str]:
    reply = _flwr_json(["supernode", "list", connection], cli_env)
    return {str(n["node-id"]) for n in reply.get("nodes", []) if n.get("status") == "online"}


def _wait(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


def loopback(work_dir: str | os.PathLike, run_config: dict, node_configs: list[str], *,
             check_unregistered: bool = True, timeout: float = 3600, stream: bool = True,
             workers: bool = True) -> dict:
    """The whole secure deployment on this machine: certificates, a SuperLink with TLS and SuperNode
    authentication, one registered SuperNode per node config (each with its training worker unless
    ``workers=False``), optionally an unregistered SuperNode (which must be refused), then the app, until its
    final status. Every process is stopped at the end.

    Returns what happened: the run status, the unregistered node's exit code, node ids, the workers' counters,
    timings."""
    work = Path(work_dir).resolve()
    certs = make_certificates(work / "certs", ["127.0.0.1", "localhost"], overwrite=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    connection = "fedtt-deploy"
    cli_env = flwr_env(write_cli_home(work / "cli", connection, address, certs[CA_CERT]))
    result: dict = {"address": address, "work_dir": str(work)}
    t0 = time.monotonic()
    with Processes() as procs:
        link = procs.start(superlink_command(work / "certs", work / "superlink", port, host="127.0.0.1",
                                             exe=flower_bin("flower-superlink")),
                           flwr_env(work / "superlink"), work / "superlink.log", work / "superlink")
        wait_port(port, link)
        result["superlink_ready_s"] = round(time.monotonic() - t0, 1)
        node_ids = []
        # the nodes share this machine's cores, as the simulation's clients do (one each by default)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = str(max(1, cores // max(1, len(node_configs))))
        for i, node_cfg in enumerate(node_configs):
            private, public = make_node_key(work / "keys", f"node{i}", overwrite=True)
            node_ids.append(register_node(public, cli_env, connection))
            home = work / f"supernode{i}"
            env = {**flwr_env(home), "OMP_NUM_THREADS": threads}
            if workers:
                sock = work / f"worker{i}" / "worker.sock"
                start_worker(procs, sock, env, work / f"worker{i}.log")
                node_cfg = f'{node_cfg} worker="{sock}"'
            procs.start(supernode_command(address, certs[CA_CERT], private, node_cfg, free_port(),
                                          exe=flower_bin("flower-supernode")),
                        env, work / f"supernode{i}.log", home)
        result["node_ids"] = node_ids
        _wait(lambda: online_nodes(cli_env, connection) >= set(node_ids), 120, "the SuperNodes did not come online")
        if check_unregistered:
            private, _ = make_node_key(work / "keys", "unregistered", overwrite=True)
            home = work / "unregistered"
            intruder = procs.start(supernode_command(address, certs[CA_CERT], private, node_configs[0], free_port(),
                                                     exe=flower_bin("flower-supernode"), max_retries=2),
                                   flwr_env(home), work / "unregistered.log", home)
            try:
                result["unregistered_exit_code"] = intruder.wait(timeout=120)
            except subprocess.TimeoutExpired:
                result["unregistered_exit_code"] = None  # still running: it was NOT refused
            result["online_after_unregistered"] = len(online_nodes(cli_env, connection))
        result["nodes_online_s"] = round(time.monotonic() - t0, 1)
        started = time.monotonic()
        result["status"] = run_and_wait(cli_env, connection, run_config, timeout, stream=stream)
        result["run_s"] = round(time.monotonic() - started, 1)
        if workers:
            from .worker import status

            result["workers"] = [status(work / f"worker{i}" / "worker.sock") for i in range(len(node_configs))]
    result["total_s"] = round(time.monotonic() - t0, 1)
    return result
