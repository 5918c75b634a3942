"""The command line: the params report and error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedtt_flwr.cli import main


def test_params_report_for_minilm(capsys):
    assert main(["params", "--model", "minilm", "--rank", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    tt, lora = report["tt"], report["lora"]
    assert report["model_type"] == "bert" and report["num_layers"] == 6
    assert tt["tt_layers"] == 24 and tt["core_params"] + tt["bias_params"] + tt["head_params"] == tt["trainable_params"]
    assert lora["adapter_params"] == 6 * 2 * 8 * (384 + 384)
    assert tt["head_params"] == lora["head_params"] == 384 * 2 + 2
    assert report["lora_over_tt_params"] > 3 and tt["bias_params"] == 0  # biases are off by default
    assert main(["params", "--model", "minilm", "--bias"]) == 0
    with_bias = json.loads(capsys.readouterr().out)["tt"]
    assert with_bias["bias_params"] == 12 * (64 + 384) and with_bias["bytes_per_round"] > tt["bytes_per_round"]
    # bytes are what Flower serializes: at least 4 bytes per fp32 parameter
    assert tt["bytes_per_round"] > 4 * tt["trainable_params"]
    assert report["lora_over_tt_bytes"] == round(lora["bytes_per_round"] / tt["bytes_per_round"], 3)


def test_params_report_for_a_decoder_preset(capsys):
    assert main(["params", "--model", "llama-2-7b"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tt"]["core_params"] == report["tt"]["trainable_params"] == 211_200
    assert report["lora"]["targets"] == ["q_proj", "v_proj"] and report["tt"]["head_params"] == 0


def test_bad_setting_exits_2_with_message(capsys):
    assert main(["params", "--model", "minilm", "--rank", "0"]) == 2
    assert "rank" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "fedtt_flwr.cli", "params", "--model", "roberta-base"],
                         capture_output=True, text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert json.loads(out.stdout)["model"] == "roberta-base"


def test_roberta_report_tensorizes_the_classifier_but_lora_keeps_the_dense_head(capsys):
    assert main(["params", "--model", "roberta-large"]) == 0
    report = json.loads(capsys.readouterr().out)
    h = 1024
    assert report["lora"]["head_params"] == h * h + h + 2 * h + 2  # classifier.dense + out_proj
    assert report["tt"]["head_params"] == 2 * h + 2  # out_proj only: classifier.dense is TT cores now
    assert report["lora_over_tt_bytes"] >= 10  # the method's claim at the size it was made for
    assert main(["params", "--model", "roberta-large", "--tensorized-classifier", "off"]) == 0
    dense_head = json.loads(capsys.readouterr().out)
    assert dense_head["tt"]["head_params"] == report["lora"]["head_params"]
    assert dense_head["lora"]["bytes_per_round"] == report["lora"]["bytes_per_round"]
    assert dense_head["lora_over_tt_bytes"] < 2


def test_simulate_rejects_a_bad_setting_before_starting_anything(capsys, monkeypatch):
    import fedtt_flwr.launch as launch

    monkeypatch.setattr(launch, "simulate", lambda **kw: (_ for _ in ()).throw(AssertionError("started")))
    assert main(["simulate", "--set", "rank=0"]) == 2
    assert "'rank': Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["simulate", "--set", "rank"]) == 2
    assert "--set expects key=value" in capsys.readouterr().err


def test_simulate_passes_absolute_paths_and_typed_values(monkeypatch, tmp_path, tiny_sst2_dir):
    import fedtt_flwr.launch as launch

    seen = {}
    monkeypatch.setattr(launch, "simulate", lambda **kw: seen.update(kw) or 0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDTT_DATA_DIR", str(tiny_sst2_dir))  # a fresh clone has no ../shared/data
    assert main(["simulate", "--num-clients", "4", "--set", "method=fedtt+", "--set", "alpha=0.1",
                 "--set", "central-eval=false", "--set", "output-dir=out"]) == 0
    cfg = seen["run_config"]
    assert seen["num_supernodes"] == 4
    assert cfg["method"] == "fedtt+" and cfg["alpha"] == 0.1 and cfg["central-eval"] is False
    assert cfg["output-dir"] == str(tmp_path / "out") and cfg["data-dir"] == str(tiny_sst2_dir.resolve())
    from fedtt_flwr.processes import format_overrides

    assert format_overrides({"a": 1, "b": "x y", "c": True}) == 'a=1 b="x y" c=true'


def test_params_report_covers_every_method(capsys):
    assert main(["params", "--model", "minilm"]) == 0
    report = json.loads(capsys.readouterr().out)
    methods = report["methods"]
    from fedtt_flwr.methods import method_names

    assert list(methods) == list(method_names())  # every registered method, in the registry's order
    assert {"fedtt", "fedtt+", "adapter", "lora", "ffa-lora", "rolora", "fedsa-lora"} <= set(methods)
    assert methods["fedtt"]["bytes_up_per_round"] == report["tt"]["bytes_per_round"]
    assert methods["lora"]["bytes_up_per_round"] == report["lora"]["bytes_per_round"]
    assert methods["fedtt+"]["bytes_up_per_round"] <= methods["fedtt"]["bytes_up_per_round"] / 2
    assert methods["ffa-lora"]["trainable_params"] == 6 * 2 * 8 * 384 + 770  # B only, plus the head
    assert methods["adapter"]["trainable_params"] == 12 * 2 * 384 * 64 + 770  # dense down + up, no biases


def test_finetune_reads_train_layernorm(monkeypatch):
    import fedtt_flwr.centralized as centralized

    seen = {}
    monkeypatch.setattr(centralized, "finetune", lambda cfg: seen.setdefault("cfg", cfg) and {})
    for text, value in (("false", False), ("weight", "weight"), ("True", True)):
        seen.clear()
        assert main(["finetune", "--train-layernorm", text]) == 0
        assert seen["cfg"].train_layernorm == value
    seen.clear()
    assert main(["finetune"]) == 0 and seen["cfg"].train_layernorm == "auto"


def _no_start(monkeypatch):
    import fedtt_flwr.launch as launch

    monkeypatch.setattr(launch, "simulate", lambda **kw: (_ for _ in ()).throw(AssertionError("started")))


@pytest.mark.parametrize(("setting", "message"), [
    ('device="tpu"', "device='tpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    ('device="cuda:7"', "torch sees"),
    ('method="fedtt+" --set schedule="fixed:99"', "schedule = 'fixed:99' does not fit"),
    ('model="/no/such/model"', "could not load model '/no/such/model'"),
    ('server-opt="fedtrimmedavg"', "trims nothing from the 3 replies a round expects"),
    ('output-dir="/proc/no-such-dir"', "output-dir '/proc/no-such-dir' is not writable"),
])
def test_simulate_checks_the_run_before_starting_anything(capsys, monkeypatch, tiny_model_dir, tiny_sst2_dir,
                                                          setting, message):
    """Found by the ServerApp these took a SuperLink and Ray start (35-45 s) and a 60-line traceback."""
    _no_start(monkeypatch)
    args = ["simulate", "--num-clients", "3", "--set", f'model="{tiny_model_dir}"', "--set",
            f'data-dir="{tiny_sst2_dir}"', "--set", "output-dir=\"/tmp/fedtt-preflight\""]
    for part in setting.split(" --set "):
        args += ["--set", part]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_simulate_refuses_a_run_name_in_use_and_a_finished_resume_does_nothing(capsys, monkeypatch, tmp_path,
                                                                              tiny_model_dir, tiny_sst2_dir):
    from fedtt_flwr.inprocess import run_inprocess

    config = {"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "output-dir": str(tmp_path),
              "num-server-rounds": 1, "local-steps": 1, "max-length": 16, "run-name": "done", "min-clients": 2}
    run_inprocess(config, num_nodes=2)
    _no_start(monkeypatch)
    base = ["simulate", "--set", f'model="{tiny_model_dir}"', "--set", f'data-dir="{tiny_sst2_dir}"',
            "--set", f'output-dir="{tmp_path}"', "--set", "num-server-rounds=1", "--set", "local-steps=1",
            "--set", "max-length=16"]
    assert main([*base, "--set", 'run-name="done"']) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*base, "--set", f'resume="{tmp_path / "done"}"']) == 0
    assert "already finished 1 round(s)" in capsys.readouterr().out


def test_a_bad_data_file_is_named_before_starting_anything(capsys, monkeypatch, tmp_path, tiny_model_dir):
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_bytes(b"sentence\tlabel\ngood film\t1\nbad \xff film\t0\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    _no_start(monkeypatch)
    assert main(["simulate", "--set", f'model="{tiny_model_dir}"', "--set", f'data-dir="{tmp_path}"',
                 "--set", f'output-dir="{tmp_path / "runs"}"']) == 2
    err = capsys.readouterr().err
    assert "train.tsv" in err and "line 3" in err


def test_deploy_run_checks_only_what_does_not_depend_on_this_machine(tmp_path):
    """`deploy run` from a laptop: the output folder, the model, a resumed run and the data are the server's."""
    from fedtt_flwr.cli import app_overrides

    items = ["output-dir=/proc/fedtt-server/runs", "model=/srv/models/my-bert", "central-eval=true",
             f"resume={tmp_path / 'on-the-server'}"]
    overrides = app_overrides(items, local_data=False)
    assert overrides["output-dir"] == "/proc/fedtt-server/runs" and "data-dir" not in overrides
    with pytest.raises(ValueError, match="rank"):
        app_overrides(["rank=0"], local_data=False)  # the configuration itself is still checked


def test_the_results_line_names_the_run_folder(tmp_path, capsys):
    from fedtt_flwr.cli import _results_line, _run_folders

    _results_line({"output-dir": str(tmp_path), "run-name": "mine"})
    assert f"results: {tmp_path}/mine/ (" in capsys.readouterr().out
    before = _run_folders({"output-dir": str(tmp_path)})
    (tmp_path / "20261203-120000-fedtt-minilm-sst2").mkdir()
    _results_line({"output-dir": str(tmp_path)}, before)
    assert f"results: {tmp_path}/20261203-120000-fedtt-minilm-sst2/ (" in capsys.readouterr().out
    _results_line({"output-dir": "/var/lib/fedtt/runs"})  # deploy run: the folder is on the server
    assert "/var/lib/fedtt/runs/<run-name>/ on the server" in capsys.readouterr().out
