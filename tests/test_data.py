"""Task files, readers and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedtt_flwr.data import TASKS, compute_metrics, load_split


def test_metrics_match_hand_computation():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    p = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    # tp=3 fp=2 fn=1 tn=2
    m = compute_metrics("mrpc", p, y)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    mcc = compute_metrics("cola", p, y)["mcc"]
    assert mcc == pytest.approx((3 * 2 - 2 * 1) / np.sqrt(5 * 4 * 4 * 3))
    assert compute_metrics("cola", np.zeros(4), np.array([0, 1, 0, 1]))["mcc"] == 0.0  # degenerate: no NaN
    # 3 classes: macro F1
    cb = compute_metrics("cb", np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert cb["f1"] == pytest.approx(np.mean([1.0, 2 / 3, 2 / 3]))


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


def test_local_readers_for_each_format(tmp_path):
    _write(tmp_path / "glue/SST-2", "dev.tsv", 'sentence\tlabel\nit\'s "great"\t1\nbad\t0\n')
    _write(tmp_path / "glue/MRPC", "dev.tsv",
           "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tA, b.\n0\t3\t4\tC\tD\n")
    _write(tmp_path / "glue/CoLA", "dev.tsv", "src\t1\t\tGood one.\nsrc\t0\t*\tOne good bad.\n")
    _write(tmp_path / "glue/RTE", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP\tH\tnot_entailment\n")
    _write(tmp_path / "superglue/CB", "val.jsonl",
           json.dumps({"premise": "P", "hypothesis": "H", "label": "neutral", "idx": 0}) + "\n")
    _write(tmp_path / "superglue/BoolQ", "val.jsonl",
           json.dumps({"passage": "P", "question": "q", "label": True, "idx": 0}) + "\n")
    sst = load_split("sst2", "dev", tmp_path)
    assert sst["text_a"] == ['it\'s "great"', "bad"] and sst["label"] == [1, 0]
    mrpc = load_split("mrpc", "dev", tmp_path)
    assert mrpc["text_a"][0] == "A b." and mrpc["text_b"][0] == "A, b." and mrpc["label"] == [1, 0]
    assert load_split("cola", "dev", tmp_path)["label"] == [1, 0]
    assert load_split("rte", "dev", tmp_path)["label"] == [1]
    assert load_split("cb", "dev", tmp_path)["label"] == [2]
    assert load_split("boolq", "dev", tmp_path)["label"] == [1]


def test_no_data_folder_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDTT_DATA_DIR", "")
    monkeypatch.setattr("fedtt_flwr.data.default_data_dir", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no data folder given or found .* hub is offline"):
        load_split("sst2", "dev")


def test_bad_task_split_label_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        load_split("sst3", "dev", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("sst2", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="task sst2: no train file at"):
        load_split("sst2", "train", tmp_path)
    _write(tmp_path / "glue/SST-2", "dev.tsv", "sentence\tlabel\nx\t7\n")
    with pytest.raises(ValueError, match=r"unexpected label value\(s\) \['7'\]"):
        load_split("sst2", "dev", tmp_path)


@pytest.mark.parametrize("task,split,rows", [
    ("sst2", "train", 67349), ("sst2", "dev", 872), ("mrpc", "train", 3668), ("mrpc", "dev", 408),
    ("rte", "train", 2490), ("rte", "dev", 277), ("cola", "train", 8551), ("cola", "dev", 1043),
    ("qnli", "dev", 5463), ("boolq", "dev", 3270), ("cb", "train", 250), ("cb", "dev", 56),
    ("superglue-rte", "dev", 277),
])
def test_real_files_parse_with_official_row_counts(shared_data, task, split, rows):
    ds = load_split(task, split, shared_data)
    assert len(ds) == rows
    assert set(ds["label"]) == set(range(len(TASKS[task].labels)))
