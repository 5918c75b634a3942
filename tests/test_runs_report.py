"""Seeing runs: trackers (TensorBoard, MLflow) read back, a tracker that fails, and `fedtt-flwr report`."""

from __future__ import annotations

import json
import logging

import pytest
from test_app_inprocess import run_app

from fedtt_flwr import tracking
from fedtt_flwr.runs import load_run, report


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_and_mlflow_hold_every_rounds_metrics_and_the_config(tmp_path, tiny_model_dir, tiny_sst2_dir):
    from mlflow.tracking import MlflowClient

    _, folder, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, tracker="tensorboard,mlflow")
    scalars = _tensorboard_scalars(folder / "tracking" / "tensorboard")
    assert scalars["accuracy"] == [(x["round"], pytest.approx(x["accuracy"])) for x in lines]
    assert [s for s, _ in scalars["bytes_up"]] == [0, 1, 2] and scalars["bytes_up"][1][1] == lines[1]["bytes_up"]
    assert "train_loss" in scalars and "elapsed_s" in scalars

    client = MlflowClient(f"sqlite:///{folder / 'tracking' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("fedtt-flwr").experiment_id])
    assert run.info.run_name == "test" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted((m.step, m.value) for m in history) == [(x["round"], pytest.approx(x["accuracy"])) for x in lines]
    assert run.data.params["method"] == "fedtt" and run.data.params["run_config.rank"] == "5"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "rejected")] == [0.0, 0.0, 0.0]


class Broken:
    """A tracker that starts and then raises on every round, as a full disk or a dead server would."""

    def __init__(self, folder, run_name, uri) -> None:
        pass

    def log_config(self, config) -> None:
        pass

    def log_round(self, step, metrics) -> None:
        raise OSError("no space left on device")

    def close(self) -> None:
        pass


def test_a_tracker_that_raises_or_is_not_installed_never_stops_the_run(tmp_path, tiny_model_dir, tiny_sst2_dir,
                                                                          monkeypatch, caplog):
    monkeypatch.setitem(tracking.BACKENDS, "mlflow", Broken)
    monkeypatch.setitem(tracking.BACKENDS, "wandb", lambda *a: __import__("wandb_is_not_installed_here"))
    with caplog.at_level(logging.WARNING):
        _, folder, lines = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, tracker="mlflow,tensorboard,wandb")
    assert [x["round"] for x in lines] == [0, 1, 2] and (folder / "summary.json").exists()
    text = caplog.text
    assert "tracker mlflow could not log round 0" in text and "no space left on device" in text
    assert text.count("tracker mlflow") == 1  # dropped after its first failure
    assert "tracker wandb could not start" in text and "pip install -e '.[tracking]'" in text
    assert [s for s, _ in _tensorboard_scalars(folder / "tracking" / "tensorboard")["accuracy"]] == [0, 1, 2]


def test_unknown_trackers_are_a_config_error():
    from fedtt_flwr.config import RunConfig

    with pytest.raises(ValueError, match="unknown tracker 'neptune'"):
        RunConfig.from_flower({"tracker": "mlflow,neptune"})
    assert tracking.parse_trackers("none") == [] and tracking.parse_trackers(" mlflow, mlflow ") == ["mlflow"]


def _fake_run(folder, method, accuracies, mb_per_round, finished=True):
    """A run folder as the ServerApp writes it (the report reads nothing else)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": method, "run_config": {"task": "sst2"}}))
    lines, total = [], 0
    for r, acc in enumerate(accuracies):
        up = 0 if r == 0 else int(mb_per_round * 1e6)
        total += up
        lines.append({"round": r, "accuracy": acc, "f1": acc, "bytes_up": up, "total_bytes_up": total,
                      "total_bytes_down": 2 * total, "elapsed_s": 10.0 * r, "schedule": None})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if finished:
        (folder / "summary.json").write_text(json.dumps({"wall_s": 31.5}))
    return folder


def test_report_compares_runs_in_a_table_and_plots(tmp_path):
    tt = _fake_run(tmp_path / "runs" / "tt", "fedtt", [0.5, 0.7, 0.8, 0.82], 0.4)
    lora = _fake_run(tmp_path / "runs" / "lora", "lora", [0.5, 0.75, 0.81, 0.83], 1.5, finished=False)
    result = report([tt, lora])
    assert result["metric"] == "accuracy" and result["level"] == 0.82  # the lowest final: every run reached it
    rows = {r["run"]: r for r in result["rows"]}
    assert rows["tt"]["rounds_to_level"] == 3 and rows["tt"]["mb_to_level"] == pytest.approx(1.2)
    assert rows["lora"]["rounds_to_level"] == 3 and rows["lora"]["mb_to_level"] == pytest.approx(4.5)
    assert rows["lora"]["best"] == 0.83 and rows["lora"]["best_round"] == 3 and not rows["lora"]["finished"]
    assert rows["tt"]["mb_down"] == pytest.approx(2.4) and rows["tt"]["wall_s"] == 31.5
    assert rows["lora"]["wall_s"] == 30.0  # unfinished: the last round's elapsed time
    assert result["plot"] == tmp_path / "runs" / "report-tt-vs-lora.png" and result["plot"].stat().st_size > 10_000
    assert "| lora (unfinished) | lora | 3 |" in result["markdown"].read_text()
    higher = report([tt, lora], metric="f1", level=0.75, out=tmp_path / "elsewhere")
    assert {r["run"]: r["rounds_to_level"] for r in higher["rows"]} == {"tt": 2, "lora": 1}
    assert higher["plot"].parent == tmp_path / "elsewhere"
    never = report([tt], level=0.9)
    assert never["rows"][0]["rounds_to_level"] is None and "not reached" in never["table"]
    assert never["plot"] == tt / "report.png"


def test_report_errors_name_the_folder_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no metrics.jsonl"):
        load_run(tmp_path / "empty")
    bad = _fake_run(tmp_path / "bad", "fedtt", [0.5, 0.6], 0.1)
    with open(bad / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"bad/metrics.jsonl, line 3: not JSON"):
        load_run(bad)
    good = _fake_run(tmp_path / "good", "fedtt", [0.5, 0.6], 0.1)
    with pytest.raises(ValueError, match="metric 'mcc' is not recorded by good"):
        report([good], metric="mcc")


def test_the_cli_report_prints_the_table_and_the_paths(tmp_path, capsys):
    from fedtt_flwr.cli import main

    tt = _fake_run(tmp_path / "tt", "fedtt", [0.5, 0.7], 0.4)
    assert main(["report", str(tt), "--level", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "| tt | fedtt | 1 | 0.7000 | 0.7000 (1) | 1 | 0.40 |" in out and str(tt / "report.png") in out
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
