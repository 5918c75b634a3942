"""The ServerApp and ClientApp end to end on an in-process grid (no Ray): a tiny BERT, tiny data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client_app.app import app as client_app
from fedtt_flwr import client as client_module
from fedtt_flwr.checkpoint import read_adapter
from fedtt_flwr.inprocess import InProcessGrid
from fedtt_flwr.methods import method_names
from server_app.app import app as server_app
from strategies import named_arrays


def run_app(tmp_path, model_dir, data_dir, nodes=3, **overrides):
    run_config = {"model": str(model_dir), "data-dir": str(data_dir), "output-dir": str(tmp_path / "runs"),
                  "num-server-rounds": 2, "local-steps": 3, "batch-size": 8, "max-length": 16, "lr": 0.01,
                  "min-clients": nodes, "run-name": "test", **overrides}
    grid = InProcessGrid(client_app, nodes, run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    server_app(grid, context)
    folder = tmp_path / "runs" / "test"
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return grid, folder, lines


def test_fedtt_run_writes_the_run_folder(tmp_path, tiny_model_dir, tiny_sst2_dir):
    client_module._session.cache_clear()  # earlier tests may have left other models in this process
    grid, folder, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, **{"fraction-evaluate": 1.0})
    assert [x["round"] for x in lines] == [0, 1, 2]
    assert lines[0]["bytes_up"] == 0 and "accuracy" in lines[0]
    for x in lines[1:]:
        assert x["clients"] == 3 and x["replies"] == 3 and x["bytes_up"] > 0 and x["bytes_down"] > 0
        assert 0 <= x["accuracy"] <= 1 and x["train_loss"] > 0 and "fed_accuracy" in x
        # Flower's own count of the same messages, federated evaluation included, is above the tensors' count
        assert x["wire_bytes_down"] > x["bytes_down"] and x["wire_bytes_up"] > x["bytes_up"]
    assert lines[2]["total_bytes_up"] == lines[1]["bytes_up"] + lines[2]["bytes_up"]
    for x in lines[1:]:  # in-process clients run one after another: the round holds all their training
        assert x["round_s"] >= x["client_train_s_sum"] >= x["client_train_s_max"] > 0 and x["aggregate_s"] > 0
    config = json.loads((folder / "config.json").read_text())
    assert config["run_config"]["rank"] == 5 and config["travelling_tensors"] > 0
    state, adapter_cfg, _ = read_adapter(folder / "adapter.safetensors")
    assert len(state) == config["travelling_tensors"]
    # only adapter tensors, the LayerNorm gains (train-layernorm = auto) and the head ever travel
    for msg in grid.sent:  # packed by default: read the names through the layout
        assert "packed" in msg.content["arrays"]
        for key in msg.content.array_records:
            assert all(".adapter." in n or n.startswith("classifier.") or n.endswith("LayerNorm.weight")
                       for n in named_arrays(msg.content, key))
    # one backbone per process, however many clients it served
    assert client_module._session.cache_info().currsize == 1


def test_fedtt_plus_run_sends_less_and_trains(tmp_path, tiny_model_dir, tiny_sst2_dir):
    unpacked = {"pack-arrays": False}  # per-tensor bytes; with packing, each record adds a layout string
    _, _, plain = run_app(tmp_path / "a", tiny_model_dir, tiny_sst2_dir, **unpacked)
    grid, folder, plus = run_app(tmp_path / "b", tiny_model_dir, tiny_sst2_dir, method="fedtt+", **unpacked)
    assert plus[1]["schedule"] == "4:0,1,3" and plus[2]["schedule"] == "4:0,2,3"  # hidden 32: 4 cores
    assert plus[1]["bytes_up"] < plain[1]["bytes_up"]
    assert plus[2]["bytes_down"] <= plain[2]["bytes_down"]
    # delta sync: in round 2 a node gets only the frozen core that changed in round 1 (core 1)
    round2 = [m for m in grid.sent if m.content["config"].get("server-round") == 2]
    assert round2 and all({n.rsplit(".", 1)[1] for n in m.content["fedtt-sync"]} == {"core_1"} for m in round2)


def test_learns_the_tiny_task(tmp_path, tiny_model_dir, tiny_sst2_dir):
    _, _, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, **{"num-server-rounds": 8, "local-steps": 15,
                                                                      "lr": 0.02, "bottleneck": 8, "partition": "iid"})
    assert lines[-1]["accuracy"] >= 0.9 > lines[0]["accuracy"]


def test_layernorm_gains_travel_every_round_and_train(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """FedTT+ freezes cores by schedule, but the norm gains (like the head) travel and train every round."""
    grid, folder, _ = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method="fedtt+",
                              **{"train-layernorm": "weight"})
    for msg in grid.sent:
        sent = named_arrays(msg.content, "arrays")
        assert sum(n.endswith("LayerNorm.weight") for n in sent) == 5  # tiny BERT: embeddings + 2 x 2
        assert not any(n.endswith("LayerNorm.bias") for n in sent)
    state, _, _ = read_adapter(folder / "adapter.safetensors")
    gain = state["bert.encoder.layer.0.output.LayerNorm.weight"]
    assert not np.allclose(gain, 1.0)  # trained away from its pretrained value (1 in the tiny model)


def test_logit_adjust_reaches_the_clients_loss(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """Same seed, same data: only the clients' loss differs, so the reported training loss must."""
    _, _, plain = run_app(tmp_path / "a", tiny_model_dir, tiny_sst2_dir, **{"num-server-rounds": 1,
                                                                            "logit-adjust": 0.0})
    _, _, adjusted = run_app(tmp_path / "b", tiny_model_dir, tiny_sst2_dir, **{"num-server-rounds": 1,
                                                                               "logit-adjust": 1.0})
    assert plain[0]["accuracy"] == adjusted[0]["accuracy"]  # same start
    assert adjusted[1]["train_loss"] != pytest.approx(plain[1]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("key,value,message", [
    ("rank", 0, "'rank': Input should be greater than or equal to 1"),
    ("task", "sst3", "'task': unknown task 'sst3'"),
    ("alpha", -1.0, "'alpha': Input should be greater than 0"),
    ("fraction-train", 1.5, "'fraction-train': Input should be less than or equal to 1"),
    ("data-dir", "/no/such/folder", "'data-dir': folder '/no/such/folder' does not exist"),
    ("partition", "random", "'partition'"),
    ("no-such-key", 1, "'no-such-key': unknown key"),
    ("dp-physical-batch", 64, "'dp-physical-batch': unknown key (now 'physical-batch')"),
])
def test_bad_config_stops_with_the_key_named(tmp_path, tiny_model_dir, tiny_sst2_dir, key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, **{key: value})


def test_model_that_cannot_load_is_a_clear_error(tmp_path, tiny_sst2_dir):
    with pytest.raises(OSError, match="could not load model"):
        run_app(tmp_path, tmp_path / "missing-model", tiny_sst2_dir)


def test_pyproject_config_matches_the_validated_defaults():
    from pathlib import Path

    import tomllib

    from fedtt_flwr.config import RunConfig

    py = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    flwr_cfg = py["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_flower(flwr_cfg).model_dump(by_alias=True) == flwr_cfg


def test_client_replies_an_error_for_a_missing_partition_id(tmp_path, tiny_model_dir, tiny_sst2_dir):
    grid = InProcessGrid(client_app, 2, {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir)},
                         node_config=lambda i: {})
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

    msg = Message(RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=101, message_type=MessageType.TRAIN)
    reply = grid.pull_messages(grid.push_messages([msg]))[0]
    assert reply.has_error() and "partition-id" in reply.error.reason


def test_every_config_key_is_documented():
    from pathlib import Path

    from fedtt_flwr.config import RunConfig

    doc = (Path(__file__).parents[1] / "docs" / "federated.md").read_text()
    missing = [f.alias or n for n, f in RunConfig.model_fields.items()
               if f"| `{n.replace('_', '-')}` |" not in doc]
    assert not missing, f"undocumented run-config keys: {missing}"


def test_same_seed_gives_the_same_initial_adapters(tmp_path, tiny_model_dir, tiny_sst2_dir):
    from fedtt_flwr.checkpoint import read_adapter

    states = []
    for name in ("a", "b"):
        run_app(tmp_path / name, tiny_model_dir, tiny_sst2_dir, **{"num-server-rounds": 1, "central-eval": False})
        states.append(read_adapter(tmp_path / name / "runs" / "test" / "adapter.safetensors")[0])
    assert all((states[0][k] == states[1][k]).all() for k in states[0])


def test_run_inprocess_runs_the_project_apps(tmp_path, tiny_model_dir, tiny_sst2_dir):
    from fedtt_flwr.inprocess import run_inprocess

    summary = run_inprocess({"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 1,
                             "local-steps": 2, "max-length": 16, "output-dir": str(tmp_path), "run-name": "r",
                             "method": "fedtt+"}, num_nodes=3)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds"] == 1 and lines[1]["replies"] == 3 and lines[1]["method"] == "fedtt+"
    assert summary["total_bytes_up"] == lines[1]["bytes_up"] > 0


def test_a_client_that_fails_every_round_leaves_the_others_to_finish(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """1 of 4 clients raises in every round: each round goes on with the 3 replies it has."""
    run_config = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
                  "num-server-rounds": 3, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 3,
                  "run-name": "flaky"}

    def flaky(msg, ctx):
        if ctx.node_config["partition-id"] == 2:
            raise RuntimeError("disk full")
        return client_app(msg, ctx)

    # a node that fails in every round: the run trains with the others, then ends failed, saying why
    grid = InProcessGrid(flaky, 4, run_config)
    with pytest.raises(RuntimeError, match=r"some node failed in every round.*allow-node-errors"):
        server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    lines = [json.loads(x) for x in (tmp_path / "flaky" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["clients"], x["replies"], x["errors"], x["skipped"]) for x in lines[1:]] == [(4, 3, 1, False)] * 3
    assert lines[-1]["accuracy"] is not None
    summary = json.loads((tmp_path / "flaky" / "summary.json").read_text())
    assert summary["problems"] == "3 client errors (some node failed in every round)" and summary["errors_every_round"]
    allowed = {**run_config, "run-name": "allowed", "allow-node-errors": True}  # accepted when asked for
    server_app(InProcessGrid(flaky, 4, allowed),
               Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=allowed))
    assert json.loads((tmp_path / "allowed" / "summary.json").read_text())["final"] is not None

    # demanding all 4 replies: every round is skipped and the adapters stay as initialised; a run that never
    # trained fails (not a silent "completed"), and says why in its summary
    strict = {**run_config, "run-name": "strict", "min-replies": 4}
    with pytest.raises(RuntimeError, match=r"no round trained; 3 of 3 rounds skipped"):
        server_app(InProcessGrid(flaky, 4, strict),
                   Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=strict))
    lines = [json.loads(x) for x in (tmp_path / "strict" / "metrics.jsonl").read_text().splitlines()]
    assert [x["skipped"] for x in lines[1:]] == [True] * 3
    assert [x["accuracy"] for x in lines[1:]] == [lines[0]["accuracy"]] * 3
    summary = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert summary["untrained"] and summary["rounds_skipped"] == [1, 2, 3] and "min_replies=4" in summary["problems"]


class _CrashInRound(InProcessGrid):
    """A grid whose connection dies when round ``crash`` starts (the ServerApp raises)."""

    def __init__(self, *args, crash: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.crash = crash

    def push_messages(self, messages):
        messages = list(messages)
        if messages and messages[0].content["config"].get("server-round") == self.crash:
            raise ConnectionError("link lost")
        return super().push_messages(messages)


@pytest.mark.parametrize(("method", "opt"), [("fedtt+", "fedavgm"), ("fedtt", "fedadam")])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, tiny_sst2_dir, method, opt):
    import numpy as np
    from safetensors.numpy import load_file

    base = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
            "num-server-rounds": 4, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 2,
            "fraction-train": 0.67, "method": method, "server-opt": opt, "server-lr": 0.05}

    def serve(grid_cls, run_config, **kw):
        grid = grid_cls(client_app, 3, run_config, **kw)
        server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))

    serve(InProcessGrid, {**base, "run-name": "whole"})
    with pytest.raises(ConnectionError):
        serve(_CrashInRound, {**base, "run-name": "cut"}, crash=3)
    cut = tmp_path / "cut"
    assert [json.loads(x)["round"] for x in (cut / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    serve(InProcessGrid, {**base, "run-name": "cut", "resume": str(cut)})  # new nodes: their caches are gone

    whole, resumed = (load_file(str(tmp_path / n / "adapter.safetensors")) for n in ("whole", "cut"))
    assert all(np.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    lines = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
             for n in ("whole", "cut")}
    assert [x["round"] for x in lines["cut"]] == [0, 1, 2, 3, 4]
    assert [x["accuracy"] for x in lines["cut"]] == pytest.approx([x["accuracy"] for x in lines["whole"]])
    assert [x["bytes_up"] for x in lines["cut"]] == [x["bytes_up"] for x in lines["whole"]]


def test_resume_refuses_changed_settings_and_missing_folders(tmp_path, tiny_model_dir, tiny_sst2_dir):
    run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, **{"num-server-rounds": 1})
    folder = tmp_path / "runs" / "test"
    with pytest.raises(ValueError, match=r"settings differ.*lr=0.01 -> 0.02"):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, lr=0.02, resume=str(folder))
    with pytest.raises(FileNotFoundError, match="resume"):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, resume=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not with dp"):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, dp="sigma", resume=str(folder))


def test_a_misconfigured_node_replies_with_an_error_and_the_run_goes_on(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """A SuperNode whose node config points at a partition that does not exist fails its task with a
    message that names the problem; the server logs it, counts it, and trains with the others."""
    run_config = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
                  "num-server-rounds": 2, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 2,
                  "run-name": "misconfigured", "allow-node-errors": True}
    raised = []

    def recording(msg, ctx):
        try:
            return client_app(msg, ctx)
        except Exception as exc:
            raised.append(str(exc))
            raise

    grid = InProcessGrid(recording, 3, run_config,
                         node_config=lambda i: {"partition-id": 7 if i == 2 else i, "num-partitions": 3})
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    lines = [json.loads(x) for x in (tmp_path / "misconfigured" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["replies"], x["errors"]) for x in lines[1:]] == [(2, 1), (2, 1)]
    assert raised and all("partition-id 7 is outside 0..2" in r for r in raised)


def test_cosine_lr_schedule_reaches_the_clients(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """lr-final = 0: the last round trains with lr 0, so the global adapters (and the dev loss) stay put."""
    common = {"num-server-rounds": 2, "lr-final": 0.0}
    _, _, cosine = run_app(tmp_path / "a", tiny_model_dir, tiny_sst2_dir, **common, **{"lr-schedule": "cosine"})
    _, _, constant = run_app(tmp_path / "b", tiny_model_dir, tiny_sst2_dir, **common, **{"lr-schedule": "constant"})
    assert [r["lr"] for r in cosine] == [None, 0.01, 0.0]  # metrics.jsonl says which lr each round used
    assert [r["lr"] for r in constant] == [None, 0.01, 0.01]
    assert cosine[1]["loss"] == pytest.approx(constant[1]["loss"], rel=1e-6)  # round 1: the full lr in both
    assert cosine[2]["loss"] == pytest.approx(cosine[1]["loss"], rel=1e-5)
    assert constant[2]["loss"] != pytest.approx(constant[1]["loss"], rel=1e-4)


@pytest.mark.parametrize("opt", ["fedadam", "fedyogi", "fedadagrad"])
@pytest.mark.parametrize("method", ["fedtt", "fedtt+"])
def test_server_optimizers_train_in_every_round(tmp_path, tiny_model_dir, tiny_sst2_dir, method, opt):
    """FedAdam & co. used to return float64 tensors: round 1 trained, every later reply was rejected (fedtt), or
    packing crashed (fedtt+), and the run still ended "completed"."""
    from safetensors.numpy import load_file

    _, folder, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, **{
        "method": method, "server-opt": opt, "server-lr": 0.01, "num-server-rounds": 3, "local-steps": 2})
    assert [(x["replies"], x["rejected"], x["skipped"]) for x in lines[1:]] == [(3, 0, False)] * 3
    assert all(a.dtype == np.float32 for a in load_file(str(folder / "adapter.safetensors")).values())
    assert json.loads((folder / "summary.json").read_text())["problems"] == ""


def test_a_run_folder_is_never_shared(tmp_path, tiny_model_dir, tiny_sst2_dir):
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.server import run_folder

    run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, **{"num-server-rounds": 1})
    before = (tmp_path / "runs" / "test" / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="already holds a run: choose another run-name, or set resume"):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, **{"num-server-rounds": 1})
    assert (tmp_path / "runs" / "test" / "metrics.jsonl").read_text() == before
    cfg = RunConfig(output_dir=str(tmp_path / "auto"))  # two runs started in the same second: two folders
    assert run_folder(cfg) != run_folder(cfg)


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny_model_dir, tiny_sst2_dir):
    run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, **{"num-server-rounds": 1})
    folder = tmp_path / "runs" / "test"
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, **{"num-server-rounds": 1, "resume": str(folder)})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert json.loads((folder / "summary.json").read_text())["final"] is not None


def test_round_health_names_what_happened():
    from types import SimpleNamespace

    from fedtt_flwr.server import round_health

    def health(skipped, rounds=2):
        return round_health(SimpleNamespace(rounds={r: {"skipped": r in skipped} for r in range(1, rounds + 1)}),
                            range(1, rounds + 1))

    assert health([]) == {"rounds_skipped": [], "replies_rejected": 0, "client_errors": 0, "problems": "",
                          "untrained": False, "errors_every_round": False}
    assert health([2])["untrained"] and health([2])["problems"].startswith("training stopped after round 1;")
    assert health([1, 2])["problems"].startswith("no round trained;")
    assert not health([1], rounds=3)["untrained"]  # rounds 2 and 3 trained


def test_a_run_written_before_a_key_existed_still_resumes(tmp_path, tiny_model_dir, tiny_sst2_dir):
    run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2, **{"num-server-rounds": 1})
    folder = tmp_path / "runs" / "test"
    saved = json.loads((folder / "config.json").read_text())
    del saved["run_config"]["max-examples"]  # as written before the key existed
    saved["run_config"]["dp-physical-batch"] = saved["run_config"].pop("physical-batch")  # before its rename
    (folder / "config.json").write_text(json.dumps(saved))
    _, _, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, nodes=2,
                          **{"num-server-rounds": 2, "resume": str(folder)})
    assert [x["round"] for x in lines] == [0, 1, 2]


def test_a_node_with_only_a_train_file_trains(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """A SuperNode whose own folder holds only glue/SST-2/train.tsv ("all of it is this node's training data")
    failed every round looking for a dev file it never uses."""
    import shutil

    node_dirs = []
    for i in range(2):
        folder = tmp_path / f"node{i}" / "glue" / "SST-2"
        folder.mkdir(parents=True)
        shutil.copy(tiny_sst2_dir / "glue" / "SST-2" / "train.tsv", folder / "train.tsv")
        node_dirs.append(tmp_path / f"node{i}")
    run_config = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
                  "num-server-rounds": 2, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 2,
                  "run-name": "own-files"}
    grid = InProcessGrid(client_app, 2, run_config, node_config=lambda i: {"data-dir": str(node_dirs[i])})
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    lines = [json.loads(x) for x in (tmp_path / "own-files" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["replies"], x["errors"]) for x in lines[1:]] == [(2, 0), (2, 0)]


@pytest.mark.parametrize("method", method_names())
def test_the_params_report_gives_a_real_runs_bytes(tmp_path, tiny_model_dir, tiny_sst2_dir, capsys, method):
    """`fedtt-flwr params --train-layernorm auto` counts what a run with the defaults sends (packed, per client), for
    every registered method; where a method changes what it sends from round to round (FedTT+'s schedule, RoLoRA's
    turns) the report's mean over 12 rounds against 12 real rounds."""
    from fedtt_flwr.cli import main
    from fedtt_flwr.methods import get_method

    rounds = 1 if get_method(method).rounds in ("all", "residual") else 12
    _, _, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method=method, **{"num-server-rounds": rounds,
                                                                                     "local-steps": 1})
    assert main(["params", "--model", str(tiny_model_dir), "--train-layernorm", "auto"]) == 0
    report = json.loads(capsys.readouterr().out)["methods_packed"][method]["bytes_up_per_round"]
    per_client = [x["bytes_up"] / x["replies"] for x in lines[1:]]
    assert all(x["replies"] == 3 for x in lines[1:])
    assert round(sum(per_client) / len(per_client)) == report


def test_resume_takes_auto_and_the_value_it_stands_for_as_the_same_setting(tmp_path):
    """A run written before lr/optimizer became 'auto' (lr 0.003, adamw) resumes under today's defaults."""
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.server import _resume_folder

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"run_config": {"lr": 0.003, "optimizer": "adamw"}}))
    assert _resume_folder(RunConfig(resume=str(folder))) == folder.resolve()
    with pytest.raises(ValueError, match="settings differ.*lr=0.003 -> 0.01"):
        _resume_folder(RunConfig(resume=str(folder), lr=0.01))
