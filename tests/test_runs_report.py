"""Seeing runs: trackers (TensorBoard, MLflow) read back, a tracker that fails, and `fedtt-flwr report`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_app_inprocess import run_app

from fedtt_flwr import tracking
from fedtt_flwr.runs import load_run, report

ROOT = Path(__file__).resolve().parents[1]


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

    def __init__(self, folder, run_name, uri, previous=None) -> None:
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
        (folder / "summary.json").write_text(json.dumps({"wall_s": 31.5, "rounds": len(accuracies) - 1}))
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


# Found by an adversarial review of the report and the trackers.
def _run(folder, run_config, records, method="fedtt", summary=None):
    """A run folder as the ServerApp writes it: config.json, metrics.jsonl, summary.json."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": method, "run_config": run_config}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _curve(metric, values, mb=1.0, **extra):
    return [{"round": i, metric: v, "total_bytes_up": int(i * mb * 1e6), **extra} for i, v in enumerate(values)]


# --- report: lower-is-better metrics (mse for STS-B / regression, perplexity and loss for generation) ---------

def test_report_knows_lower_is_better_metrics(tmp_path):
    # STS-B's preset metrics are pearson, spearman, mse: mse falls from 4.0 to 0.5 as the model learns
    run = _run(tmp_path / "stsb", {"task": "stsb"}, _curve("mse", [4.0, 2.0, 1.0, 0.5]), summary={"wall_s": 1})
    row = report([run], metric="mse")["rows"][0]
    assert row["best"] == 0.5 and row["best_round"] == 3  # got best 4.0 in round 0 (the untrained model)
    assert row["rounds_to_level"] == 3  # got 0: round 0's mse 4.0 ">= 0.5" counts as reaching the level


# --- report: custom tasks (task = "custom" with a metrics key) ------------------------------------------------

def test_report_default_metric_of_a_custom_task_is_its_main_metric(tmp_path):
    # the ServerApp's main metric is task_of(cfg).metrics[0] = f1; the report sorts alphabetically instead
    run = _run(tmp_path / "c", {"task": "custom", "metrics": "f1,accuracy"},
               [dict(r, f1=r["accuracy"] / 2) for r in _curve("accuracy", [0.5, 0.6, 0.7])], summary={"wall_s": 1})
    assert report([run])["metric"] == "f1"  # got 'accuracy'


def test_report_of_a_personalised_method_on_a_custom_task(tmp_path):
    # FedSA-LoRA (personal): only fed_accuracy is recorded; the custom-task fallback knows bare names only
    run = _run(tmp_path / "c", {"task": "custom", "metrics": "accuracy"}, _curve("fed_accuracy", [0.5, 0.6, 0.7]),
               method="fedsa-lora", summary={"wall_s": 1})
    assert report([run])["metric"] == "fed_accuracy"  # ValueError: the runs share no dev metric (c: none)


# --- report: NaN in metrics.jsonl (json.dumps writes NaN; a diverged regression run has pearson NaN) --------

def test_report_ignores_nan_values(tmp_path):
    diverged = _run(tmp_path / "a", {"task": "stsb"}, _curve("pearson", [0.1, 0.6, float("nan")]), summary={})
    good = _run(tmp_path / "b", {"task": "stsb"}, _curve("pearson", [0.1, 0.5, 0.7]), summary={})
    result = report([diverged, good])
    assert result["level"] == result["level"]  # got NaN: min() of the finals starts with NaN
    rows = {r["run"]: r for r in result["rows"]}
    assert rows["b"]["rounds_to_level"] is not None  # got None: nothing is >= NaN, "not reached" for every run
    nan_first = report([_run(tmp_path / "c", {"task": "stsb"}, _curve("pearson", [float("nan"), 0.5, 0.7]),
                             summary={})])
    assert nan_first["rows"][0]["best"] == 0.7  # got nan (round 0): max() keeps NaN when it comes first


# --- report: run names --------------------------------------------------------------------------------------

def test_report_of_the_current_folder_names_it(tmp_path, monkeypatch):
    run = _run(tmp_path / "tt", {"task": "sst2"}, _curve("accuracy", [0.5, 0.7]), summary={"wall_s": 1})
    monkeypatch.chdir(run)
    assert report(["."])["rows"][0]["run"] == "tt"  # got '': Path('.').name


def test_report_runs_with_the_same_folder_name_are_told_apart(tmp_path):
    a = _run(tmp_path / "seed0" / "lora", {"task": "sst2"}, _curve("accuracy", [0.5, 0.7]), "lora", {"wall_s": 1})
    b = _run(tmp_path / "seed1" / "lora", {"task": "sst2"}, _curve("accuracy", [0.5, 0.8]), "lora", {"wall_s": 1})
    result = report([a, b])
    names = [r["run"] for r in result["rows"]]
    assert len(set(names)) == 2, names  # got ['lora', 'lora'] (and legend 'lora (lora)' twice; report-lora-vs-lora)


# --- report: a finished run continued with more rounds (docs: "raise num-server-rounds to continue it") ------

def test_report_a_continued_and_crashed_run_is_unfinished(tmp_path):
    # finished 2 rounds (summary.json), resumed with num-server-rounds = 4, crashed after round 3
    run = _run(tmp_path / "r", {"task": "sst2"}, _curve("accuracy", [0.5, 0.6, 0.7, 0.75]),
               summary={"rounds": 2, "wall_s": 20.0})
    row = report([run])["rows"][0]
    assert not row["finished"]  # got True: any summary.json counts, even the earlier 2-round one
    assert row["wall_s"] != 20.0  # got the old run's wall time for 3 rounds


# --- cli._results_line: which folder gets the report -------------------------------------------------------

def test_results_line_reports_this_runs_folder_not_a_concurrent_one(tmp_path, monkeypatch):
    """Another run in the same output-dir touches its folder every round (checkpoints): the report goes to the folder
    this command's run created, not to the newest one."""
    from fedtt_flwr import cli

    out = tmp_path / "runs"
    other = out / "20260101-000000-lora-other"  # a run started earlier in the same output-dir, still running
    other.mkdir(parents=True)
    (other / "metrics.jsonl").write_text('{"round": 0, "accuracy": 0.5}\n')
    before = cli._run_folders({"output-dir": str(out)})
    mine = out / "20260101-000100-fedtt-mine"  # this command's run
    mine.mkdir()
    (mine / "metrics.jsonl").write_text('{"round": 0, "accuracy": 0.6}\n')
    os.utime(mine, (time.time() - 20,) * 2)
    os.utime(other, (time.time() - 5,) * 2)  # the other run's checkpoint os.replace() touches its folder later
    reported = []
    monkeypatch.setattr(cli, "_own_report", reported.append)
    cli._results_line({"output-dir": str(out)}, before)
    assert reported == [str(mine)]


# --- tracking ----------------------------------------------------------------------------------------------

def test_mlflow_marks_a_failed_run_failed(tmp_path, tiny_model_dir, tiny_sst2_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    from fedtt_flwr import server

    def broken(*a, **k):
        raise RuntimeError("disk full while saving the adapter")

    monkeypatch.setattr(server, "save_adapter", broken)
    with pytest.raises(RuntimeError, match="disk full"):  # the real error is not masked (this part passes)
        run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, tracker="mlflow", **{"num-server-rounds": 1})
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'test' / 'tracking' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("fedtt-flwr").experiment_id])
    assert run.info.status == "FAILED"  # got FINISHED: set_terminated() defaults to FINISHED


_START = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[4])
    import mlflow.tracking  # imported before the start line: both runs open the store at the same moment
    from fedtt_flwr.tracking import Tracking
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    t = Tracking(["mlflow"], Path(sys.argv[1]), sys.argv[3])
    print("live" if t.live else "dropped")
    t.close()
""")


def test_two_runs_starting_together_on_one_mlflow_store_both_track(tmp_path):
    # tracker-dir shared by two runs (to see them in one MLflow UI), both starting at once: SQLite schema
    # creation / experiment creation race; the loser's MLflow tracking is dropped for its whole run
    script = tmp_path / "start.py"
    script.write_text(_START)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "shared"), str(go), name, str(ROOT)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for name in ("run-a", "run-b")]
    time.sleep(8)  # both have imported mlflow and wait
    go.touch()
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    # each prints one verdict; MLflow's own log lines may come before or after it
    verdicts = [[line.strip() for line in o.splitlines() if line.strip() in ("live", "dropped")] for o in outputs]
    assert verdicts == [["live"], ["live"]], outputs


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, tiny_model_dir, tiny_sst2_dir):
    from mlflow.tracking import MlflowClient

    _, folder, _ = run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, tracker="mlflow", **{"num-server-rounds": 2})
    run_app(tmp_path, tiny_model_dir, tiny_sst2_dir, tracker="mlflow", resume=str(folder), **{"num-server-rounds": 3})
    client = MlflowClient(f"sqlite:///{folder / 'tracking' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fedtt-flwr").experiment_id])
    steps = [sorted(m.step for m in client.get_metric_history(r.info.run_id, "accuracy")) for r in runs]
    assert steps == [[0, 1, 2, 3]]  # got [[3], [0, 1, 2]]: two runs named 'test', the resumed one holds round 3 only
