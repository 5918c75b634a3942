"""The command line: the params report and error handling."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert json.loads(out.stdout)["tt"]["core_params"] == 37_440
