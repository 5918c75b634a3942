"""Deployment: certificates and keys, and the whole secure federation on loopback (SuperLink with TLS and
SuperNode authentication, 2 SuperNodes with their own data, 1 round of FedTT on a tiny model)."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedtt_flwr.client import node_partition
from fedtt_flwr.deploy import certificate_hosts, loopback, make_certificates, make_node_key, node_config


def test_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path):
    paths = make_certificates(tmp_path, ["10.0.0.5", "fl.example.org"], days=30)
    ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server.pem"].read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # the SuperLink dials its own SuperExec at 127.0.0.1: the loopback names are always in
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE(paths[key].stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="overwrite"):
        make_certificates(tmp_path, ["10.0.0.5"])
    with pytest.raises(ValueError, match="host"):
        make_certificates(tmp_path / "x", [])
    ca_bytes = paths["ca.crt"].read_bytes()
    renewed = make_certificates(tmp_path, ["10.0.0.6"], renew_server=True)  # rotation: same CA, new server cert
    assert renewed["ca.crt"].read_bytes() == ca_bytes
    new_server = x509.load_pem_x509_certificate(renewed["server.pem"].read_bytes())
    new_server.verify_directly_issued_by(ca)
    assert new_server.serial_number != server.serial_number
    # a renewal naming one host keeps the old names (dropping them broke the SuperLink after a restart)
    assert certificate_hosts(renewed["server.pem"]) == ["10.0.0.5", "127.0.0.1", "10.0.0.6", "fl.example.org",
                                                        "localhost"]
    only = make_certificates(tmp_path, ["10.0.0.7"], renew_server=True, keep_hosts=False)
    assert certificate_hosts(only["server.pem"]) == ["10.0.0.7", "127.0.0.1", "localhost"]
    with pytest.raises(FileNotFoundError, match="CA"):
        make_certificates(tmp_path / "empty", ["h"], renew_server=True)


def test_node_keys_are_nist_ec_in_openssh_format(tmp_path):
    private, public = make_node_key(tmp_path, "hospital-a")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        make_node_key(tmp_path, "hospital-a")
    with pytest.raises(ValueError):
        make_node_key(tmp_path, "../x")


class _Ctx:
    def __init__(self, node_config, run_config):
        self.node_config, self.run_config = node_config, run_config


def test_node_config_selects_a_nodes_own_folder_or_a_partition(tmp_path):
    server, node = tmp_path / "server", tmp_path / "node"
    server.mkdir()
    node.mkdir()
    run = {"data-dir": str(server)}
    own, pid, num = node_partition(_Ctx({"data-dir": str(node)}, run))
    assert (own.data_dir, pid, num) == (str(node), 0, 1)  # the whole local folder
    part, pid, num = node_partition(_Ctx({"partition-id": 1, "num-partitions": 4}, run))
    assert (part.data_dir, pid, num) == (str(server), 1, 4)
    # the server's folder need not exist on a node that brings its own
    own, _, _ = node_partition(_Ctx({"data-dir": str(node)}, {"data-dir": "/only/on/the/server"}))
    assert own.data_dir == str(node)
    with pytest.raises(ValueError, match="node config 'data-dir'"):
        node_partition(_Ctx({"data-dir": str(tmp_path / "missing")}, run))
    with pytest.raises(ValueError, match="no data"):
        node_partition(_Ctx({}, run))
    assert node_config(str(tmp_path), 1, 2) == f'data-dir="{tmp_path}" partition-id=1 num-partitions=2'
    with pytest.raises(ValueError):
        node_config()


def _two_node_csvs(tmp_path, tiny_sst2_dir):
    """Each node its own CSV files of a custom task (text,label with string labels), a train and a dev file.
    (docs/deployment.md's test covers a node's own GLUE folder and a partition of a shared one.)"""
    rows = (tiny_sst2_dir / "glue" / "SST-2" / "train.tsv").read_text().splitlines()[1:]
    names = {"0": "negative", "1": "positive"}
    configs = []
    for i, (part, dev) in enumerate(((rows[:100], rows[200:220]), (rows[100:200], rows[220:]))):
        folder = tmp_path / f"site-{i}"
        folder.mkdir()
        files = {}
        for split, lines in (("train", part), ("dev", dev)):
            if lines:
                files[split] = folder / f"{split}.csv"
                files[split].write_text("text,label\n" + "".join(
                    f'"{t}",{names[y]}\n' for t, y in (line.split("\t") for line in lines)))
        configs.append(node_config(train_file=files["train"], dev_file=files["dev"]))
    return configs


def _ps_args() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_secure_loopback_federation_with_each_node_on_its_own_csv(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """TLS, SuperNode authentication (an unregistered node is refused), 2 SuperNodes each on its own CSV file, each
    with its training worker: the backbone is loaded once per node across rounds."""
    work = tmp_path / "deploy"
    run_config = {"model": str(tiny_model_dir), "task": "custom", "labels": "negative,positive", "method": "fedtt",
                  "num-server-rounds": 2, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 2,
                  "central-eval": False, "fraction-evaluate": 1.0, "output-dir": str(tmp_path / "runs"),
                  "run-name": "deployed",
                  "dp": "sigma", "dp-noise-multiplier": 1.0}  # local DP: the accountant lives on each SuperNode
    result = loopback(work, run_config, _two_node_csvs(tmp_path, tiny_sst2_dir), stream=False, timeout=600)
    print(json.dumps(result, indent=2))
    assert result["status"] == "finished:completed", (work / "superlink.log").read_text()[-3000:]
    assert result["unregistered_exit_code"] not in (None, 0), "an unregistered SuperNode must be refused"
    assert result["online_after_unregistered"] == 2
    assert "Failed to activate SuperNode" in (work / "unregistered.log").read_text()
    lines = [json.loads(x) for x in (tmp_path / "runs" / "deployed" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["round"] == 2 and lines[-1]["replies"] == 2 and lines[-1]["errors"] == 0
    assert [(w["model_loads"], w["requests"], w["failures"]) for w in result["workers"]] == [(1, 4, 0), (1, 4, 0)]
    assert len({w["pid"] for w in result["workers"]}) == 2  # one worker per node
    assert lines[-1]["wire_bytes_up"] > lines[-1]["bytes_up"] > 0
    assert lines[-1]["dp_epsilon_max"] > 0
    assert 0 <= lines[-1]["fed_accuracy"] <= 1  # each node evaluated on its own dev.csv
    assert str(work) not in _ps_args(), "every process the loopback started must be stopped"


def test_cli_makes_the_files_and_prints_the_flower_commands(tmp_path, capsys):
    from fedtt_flwr.cli import main

    assert main(["deploy", "certs", "--out", str(tmp_path / "certs"), "--host", "fl.example.org"]) == 0
    assert main(["deploy", "node-key", "--out", str(tmp_path / "keys"), "--name", "site-a"]) == 0
    assert main(["deploy", "certs", "--out", str(tmp_path / "certs"), "--host", "x"]) == 2  # exists: a clear error
    assert "already exist" in capsys.readouterr().err
    assert main(["deploy", "superlink", "--certs", str(tmp_path / "certs"), "--state", str(tmp_path / "s"),
                 "--print-only"]) == 0
    link = capsys.readouterr().out.split()
    assert "--enable-supernode-auth" in link and "--insecure" not in link
    assert link[link.index("--ssl-certfile") + 1] == str(tmp_path / "certs" / "server.pem")
    assert main(["deploy", "supernode", "--superlink", "fl.example.org:9200", "--ca", str(tmp_path / "certs/ca.crt"),
                 "--key", str(tmp_path / "keys/site-a"), "--data-dir", str(tmp_path), "--print-only"]) == 0
    node = capsys.readouterr().out
    assert main(["deploy", "supernode", "--superlink", "fl.example.org:9200", "--ca", str(tmp_path / "certs/ca.crt"),
                 "--key", str(tmp_path / "keys/site-a"), "--data-dir", str(tmp_path), "--print-only",
                 "--worker", str(tmp_path / "w/worker.sock")]) == 0
    assert f'worker="{tmp_path / "w/worker.sock"}"' in capsys.readouterr().out
    assert "--root-certificates" in node and "--auth-supernode-private-key" in node and str(tmp_path) in node
