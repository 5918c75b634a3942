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
