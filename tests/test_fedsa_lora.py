"""FedSA-LoRA: only LoRA's A (and the head) travel; every node keeps its own B across rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from test_app_inprocess import run_app

from client_app.app import app as client_app
from fedtt_flwr.client import LOCAL_KEY
from fedtt_flwr.config import RunConfig
from fedtt_flwr.inprocess import InProcessGrid
from fedtt_flwr.methods import build_model, get_method
from server_app.app import app as server_app
from strategies import named_arrays


def test_only_a_and_the_head_travel_and_b_trains_locally(tiny_model_dir):
    model = build_model(RunConfig(model=str(tiny_model_dir), method="fedsa-lora"))[0]
    travelling, local = set(model.fedtt_state_names), set(model.fedtt_local_names)
    assert travelling and local and not travelling & local
    assert all(".lora_B." in n for n in local) and len(local) == 4  # query and value in 2 layers
    assert not any(".lora_B." in n for n in travelling)
    assert {n for n in travelling if ".lora_A." in n} and {n for n in travelling if "classifier" in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == travelling | local
    assert get_method("fedsa-lora").personal and get_method("fedsa-lora").stateful


def test_each_node_keeps_its_own_b_across_rounds_and_only_a_is_sent(tmp_path, tiny_model_dir, tiny_sst2_dir):
    grid, folder, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method="fedsa-lora",
                                  **{"num-server-rounds": 3})
    for msg in grid.sent:  # nothing of B ever goes down (up: the replies carry exactly what was sent)
        for key in msg.content.array_records:
            assert not any(".lora_B." in n for n in named_arrays(msg.content, key))
    b = {nid: {n: a.numpy() for n, a in ctx.state[LOCAL_KEY].items()} for nid, ctx in grid.contexts.items()}
    names = sorted(next(iter(b.values())))
    assert all(sorted(v) == names for v in b.values())
    first, second = list(b.values())[:2]
    assert any(not np.array_equal(first[n], second[n]) for n in names), "B should differ between clients"
    assert all(np.abs(v).max() > 0 for node in b.values() for v in node.values())  # trained away from B = 0
    # every round: the nodes evaluate their own model; central evaluation does not apply
    assert all("fed_accuracy" in x and "accuracy" not in x for x in lines[1:])
    assert all(x["replies"] == 3 and x["rejected"] == 0 for x in lines[1:])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final"]["fed_accuracy"] == lines[-1]["fed_accuracy"]
    config = json.loads((folder / "config.json").read_text())
    assert config["resolved"]["fraction-evaluate"] == 1.0


def test_b_persists_in_the_node_state_between_rounds(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """Round 2 starts from the B the node trained in round 1 (not from the initial zeros): what Context state
    carries between rounds, in the simulation and in deployment alike."""
    seen = {}

    def recording(msg, ctx):
        before = {n: a.numpy().copy() for n, a in ctx.state[LOCAL_KEY].items()} if LOCAL_KEY in ctx.state else None
        reply = client_app(msg, ctx)
        if msg.metadata.message_type == "train":
            seen.setdefault(ctx.node_id, []).append(
                (before, {n: a.numpy().copy() for n, a in ctx.state[LOCAL_KEY].items()}))
        return reply

    run_config = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
                  "num-server-rounds": 2, "local-steps": 2, "batch-size": 8, "max-length": 16, "min-clients": 2,
                  "method": "fedsa-lora", "run-name": "persist"}
    server_app(InProcessGrid(recording, 2, run_config),
               Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    for rounds in seen.values():
        (before1, after1), (before2, _) = rounds
        assert before1 is None  # round 1: B as built (zeros)
        assert all(np.array_equal(before2[n], after1[n]) for n in after1)


def test_bytes_are_half_of_loras_adapter_plus_the_head(tiny_model_dir):
    from fedtt_flwr.report import param_report, serialized_bytes

    report = param_report(str(tiny_model_dir))["methods"]
    head = serialized_bytes({"classifier.weight": (2, 32), "classifier.bias": (2,)})  # the tiny BERT's own head
    lora_adapter = report["lora"]["bytes_up_per_round"] - head
    assert report["fedsa-lora"]["bytes_up_per_round"] == lora_adapter // 2 + head
    model = build_model(RunConfig(model=str(tiny_model_dir), method="lora"))[0]
    params = dict(model.named_parameters())
    a = sum(params[n].numel() for n in model.fedtt_state_names if ".lora_A." in n)
    b = sum(params[n].numel() for n in model.fedtt_state_names if ".lora_B." in n)
    assert a == b and report["fedsa-lora"]["trainable_params"] == a + b + 2 * 32 + 2  # B trains too, at home


@pytest.mark.parametrize("central", [True, False])
def test_the_server_says_central_evaluation_does_not_apply(tmp_path, tiny_model_dir, tiny_sst2_dir, caplog, central):
    with caplog.at_level("INFO"):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method="fedsa-lora", **{"central-eval": central})
    assert ("central evaluation does not apply to fedsa-lora" in caplog.text) == central


def test_resume_is_refused(tmp_path, tiny_model_dir, tiny_sst2_dir):
    """Each node's B lives in the interrupted run's node contexts: a resumed run would restart it from zero."""
    run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method="fedsa-lora", **{"num-server-rounds": 1})
    with pytest.raises(ValueError, match="resume: not with fedsa-lora"):
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, method="fedsa-lora",
                **{"num-server-rounds": 2, "resume": str(tmp_path / "runs" / "test")})
