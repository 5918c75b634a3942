"""Task files, readers and metrics."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time

import numpy as np
import pytest

from fedtt_flwr import data
from fedtt_flwr.data import TASKS, compute_metrics, load_split, load_task, resolve_data_source, write_split


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


def test_bad_task_split_label_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        load_split("sst3", "dev", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("sst2", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"task sst2: data-dir .* has none of the task's files "
                       r"\(glue/SST-2/train.tsv, glue/SST-2/dev.tsv\)"):
        load_split("sst2", "train", tmp_path)
    _write(tmp_path / "glue/SST-2", "dev.tsv", "sentence\tlabel\nx\t1\ny\t7\nz\t9\n")
    with pytest.raises(FileNotFoundError, match="task sst2: no train file at .*train.tsv \\(data-dir "):
        load_split("sst2", "train", tmp_path)
    with pytest.raises(ValueError, match=r"dev.tsv line 3, column 'label': unknown label '7' for task sst2 \(labels: "
                       r"\['0', '1'\]; not among them in this dev split: \['7', '9'\]\)"):
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


# --- malformed files: one ValueError naming the file, the line and (for UTF-8) the column -----------------

_CB = json.dumps({"premise": "P", "hypothesis": "H", "label": "neutral"})


@pytest.mark.parametrize("task,name,content,message", [
    ("sst2", "glue/SST-2/dev.tsv", b"sentence\tlabel\ngood\t1\nno tab here\n",
     r"line 3: expected 2 tab-separated fields \(sentence, label\), got 1$"),
    ("sst2", "glue/SST-2/dev.tsv", b"sentence\tlabel\ngood\t1\n \t0\nbad\t0\n",
     r"line 3, column 'sentence': empty text$"),
    ("mrpc", "glue/MRPC/dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA\n".encode(),
     r"line 2: expected 5 tab-separated fields \(Quality, #1 ID, #2 ID, #1 String, #2 String\), got 4$"),
    ("cola", "glue/CoLA/dev.tsv", b"src\t1\t\tGood.\nsrc\t0\n",  # no header: the second row is line 2
     r"line 2: expected 4 tab-separated fields \(source, label, original_label, sentence\), got 2$"),
    ("sst2", "glue/SST-2/dev.tsv", "sentence\tlabel\ngood\t1\ncaf\u00e9 \xff\t0\n".encode("latin-1"),
     r"line 3, column 4 \(byte 0xe9\): not valid UTF-8$"),
    ("sst2", "glue/SST-2/dev.tsv", "sentence\tlabel\nr\u00e9sum\u00e9 ".encode() + b"\xff\t0\n",
     r"line 2, column 8 \(byte 0xff\): not valid UTF-8$"),  # columns count characters, not bytes
    ("mrpc", "glue/MRPC/dev.tsv", b"\xef\xbb\xbfQual\xffity\n",  # the BOM is not a column
     r"line 1, column 5 \(byte 0xff\): not valid UTF-8$"),
    ("cb", "superglue/CB/val.jsonl", f"{_CB}\n\n{_CB[:-1]}\n".encode(),
     r"line 3: invalid JSON \(Expecting ',' delimiter at column 55\)$"),
    ("cb", "superglue/CB/val.jsonl", f'{_CB}\n\n\n{{"premise": "P", "label": "neutral"}}\n'.encode(),
     r"line 4: no column 'hypothesis' \(the record has premise, label\)$"),  # blank lines skipped, still counted
    ("cb", "superglue/CB/val.jsonl", f"{_CB}\n[1, 2]\n".encode(), r"line 2: expected a JSON object, got list$"),
    ("cb", "superglue/CB/val.jsonl", b'{"premise": 3, "hypothesis": "H", "label": "neutral"}\n',
     r"line 1, column 'premise': expected text, got int 3$"),
    ("cb", "superglue/CB/val.jsonl", f"{_CB}\n{_CB}\n".encode().replace(b"neutral", b"neutr\xe1l"),
     r"line 1, column 52 \(byte 0xe1\): not valid UTF-8$"),
    ("boolq", "superglue/BoolQ/val.jsonl", b'{"passage": "P", "question": "q", "label": true}\n'
     b'{"passage": "P", "question": "q", "label": null}\n',
     r"line 2, column 'label': expected a label, got None$"),
    ("sst2", "glue/SST-2/dev.tsv", b"sentence\tlabel\r\ngood\t1\r\nbad\r\n",
     r"line 3: expected 2 tab-separated fields \(sentence, label\), got 1$"),
    ("sst2", "glue/SST-2/dev.tsv", b"sentence\tlabel\r\ngood\t1\r\n\xff\t0\r\n",
     r"line 3, column 1 \(byte 0xff\): not valid UTF-8$"),
], ids=["tsv-short-row", "tsv-empty-text", "tsv-bom-short-row", "tsv-no-header", "utf8-latin1",
        "utf8-columns-are-characters", "utf8-after-bom", "jsonl-bad-json", "jsonl-missing-field", "jsonl-not-object",
        "jsonl-text-not-string", "jsonl-utf8", "jsonl-bad-label", "tsv-crlf-short-row", "utf8-crlf"])
def test_malformed_files_name_file_line_and_column(tmp_path, task, name, content, message):
    path = tmp_path / name
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} {message}"):
        load_split(task, "dev", tmp_path)


# --- where the data comes from ----------------------------------------------------------------------------


@pytest.fixture
def no_sources(monkeypatch, tmp_path):
    """No data folder, an empty hub cache and a hub endpoint nobody listens on, whatever this machine has."""
    monkeypatch.delenv("FEDTT_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "SHARED_DATA_DIR", tmp_path / "no-shared")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return tmp_path


def _online(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def _sst2_folder(root, sentence):
    _write(root / "glue/SST-2", "dev.tsv", f"sentence\tlabel\n{sentence}\t1\n")
    return root


def test_resolution_order_data_dir_then_env_then_shared(no_sources, monkeypatch):
    given, env, shared = (_sst2_folder(no_sources / name, name) for name in ("given", "env", "shared"))
    monkeypatch.setattr(data, "SHARED_DATA_DIR", shared)
    monkeypatch.setenv("FEDTT_DATA_DIR", str(env))
    assert resolve_data_source("sst2", given) == data.DataSource("local", f"data-dir {given}", given.resolve())
    assert load_split("sst2", "dev", given)["text_a"] == ["given"]
    assert resolve_data_source("sst2").description == f"$FEDTT_DATA_DIR {env}"
    assert load_split("sst2", "dev")["text_a"] == ["env"]
    monkeypatch.delenv("FEDTT_DATA_DIR")
    assert resolve_data_source("sst2", "").description == f"../shared/data next to the checkout ({shared})"
    assert load_split("sst2", "dev")["text_a"] == ["shared"]
    assert data.default_data_dir() == shared


def test_a_named_folder_without_the_task_is_an_error_not_a_fallback(no_sources, monkeypatch):
    monkeypatch.setattr(data, "SHARED_DATA_DIR", _sst2_folder(no_sources / "shared", "shared"))
    empty = no_sources / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^task sst2: data-dir {re.escape(str(empty))} has none of the "
                       r"task's files \(glue/SST-2/train.tsv, glue/SST-2/dev.tsv\)$"):
        load_split("sst2", "dev", empty)
    monkeypatch.setenv("FEDTT_DATA_DIR", str(no_sources / "typo"))
    with pytest.raises(FileNotFoundError, match=r"^task sst2: \$FEDTT_DATA_DIR .*typo is not a folder$"):
        load_task("sst2")
    # ../shared/data is only a guess: without the task it is passed over, and the message says so
    monkeypatch.delenv("FEDTT_DATA_DIR")
    with pytest.raises(FileNotFoundError, match=r"next to the checkout \(.*shared\): no superglue/CB;"):
        resolve_data_source("cb")


@pytest.mark.parametrize("offline", [True, False], ids=["offline-forced", "hub-unreachable"])
def test_no_source_is_one_line_error_within_seconds(no_sources, monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        _online(monkeypatch)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        load_task("sst2")
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert "\n" not in message
    for part in ("task sst2: no data found; looked at data-dir (not set); $FEDTT_DATA_DIR (not set); "
                 "../shared/data next to the checkout", f"({no_sources / 'hf' / 'datasets'}: no nyu-mll/glue sst2)",
                 "Fix: set FEDTT_DATA_DIR=/path/to/folder (GLUE/SuperGLUE layout: glue/SST-2/train.tsv, "
                 "glue/SST-2/dev.tsv) or --set data-dir=/path/to/folder",
                 "`python -m fedtt_flwr.data download sst2 --out DIR` on a machine with network access"):
        assert part in message
    assert ("offline mode forced" in message) == offline
    refused = re.search(r"the Hugging Face hub \(http://127\.0\.0\.1:9: .*Connection refused\)\.", message)
    assert bool(refused) == (not offline)


class _Hub(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self.send_response(self.code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub(no_sources, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    _online(monkeypatch)
    yield server
    server.shutdown()
    server.server_close()


def test_a_reachable_hub_is_a_source_unless_offline_is_forced(local_hub, monkeypatch):
    assert resolve_data_source("sst2") == data.DataSource("hub", "the Hugging Face hub (nyu-mll/glue sst2)")
    monkeypatch.setattr(_Hub, "code", 404)  # any answer counts ...
    assert resolve_data_source("cb").kind == "hub"
    monkeypatch.setattr(_Hub, "code", 502)  # ... but a proxy's "bad gateway"
    with pytest.raises(FileNotFoundError, match=r"the Hugging Face hub \(http://127.0.0.1:\d+: HTTP 502\)"):
        resolve_data_source("sst2")
    monkeypatch.setattr(_Hub, "code", 200)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="offline mode forced"):
        resolve_data_source("sst2")


def test_a_silent_hub_fails_within_the_probe_timeout(no_sources, monkeypatch):
    import socket

    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setattr(data, "HUB_PROBE_TIMEOUT_S", 0.3)
        _online(monkeypatch)
        start = time.monotonic()
        with pytest.raises(FileNotFoundError, match="no answer within 0.3 s"):
            resolve_data_source("sst2")
        assert time.monotonic() - start < 1.5


def _fake_hub_cache(cache, rows):
    """The datasets cache as ``load_dataset("nyu-mll/glue", "sst2")`` leaves it (arrow files + info)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    folder = cache / "nyu-mll___glue" / "sst2" / "0.0.0" / "0123abcd"
    folder.mkdir(parents=True)
    features = datasets.Features(sentence=datasets.Value("string"), idx=datasets.Value("int32"),
                                 label=datasets.ClassLabel(names=["negative", "positive"]))
    splits = datasets.SplitDict(dataset_name="glue")
    for split, split_rows in rows.items():
        with ArrowWriter(features=features, path=str(folder / f"glue-{split}.arrow")) as writer:
            for i, (sentence, label) in enumerate(split_rows):
                writer.write({"sentence": sentence, "idx": i, "label": label})
            n, _ = writer.finalize()
        splits.add(datasets.SplitInfo(name=split, num_examples=n, dataset_name="glue"))
    datasets.DatasetInfo(features=features, splits=splits, config_name="sst2",
                         dataset_name="glue").write_to_directory(str(folder))


@pytest.mark.parametrize("offline", [True, False], ids=["offline-forced", "hub-unreachable"])
def test_the_hub_cache_is_used_without_the_network_and_downloads_to_the_local_layout(no_sources, monkeypatch,
                                                                                    offline):
    _fake_hub_cache(no_sources / "hf" / "datasets", {"train": [("good", 1), ("bad", 0)], "validation": [("ok", 1)]})
    if not offline:
        _online(monkeypatch)  # the endpoint is unreachable: the cache must not wait for it
    source = resolve_data_source("sst2")
    assert source == data.DataSource("hub", "the Hugging Face hub (nyu-mll/glue sst2, cached)", cached=True)
    train, dev, note = load_task("sst2")
    assert (train["text_a"], train["label"], dev["text_a"], note) == (["good", "bad"], [1, 0], ["ok"], None)
    out = no_sources / "out"
    assert data.main(["download", "sst2", "--out", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == ["glue/SST-2/dev.tsv",
                                                                                "glue/SST-2/train.tsv"]
    assert (out / "glue/SST-2/train.tsv").read_text() == "sentence\tlabel\ngood\t1\nbad\t0\n"
    assert load_split("sst2", "train", out)[:] == train[:]


def test_download_without_a_source_says_so(no_sources, capsys):
    assert data.main(["download", "cb", "--out", str(no_sources / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: task cb: cannot download; looked at the Hugging Face datasets cache")
    assert not (no_sources / "out").exists()


_TEXTS = ['it\'s "quoted"', "caf\u00e9 \u2028 line-separator \x0b \x1c", " spaces  ", "x"]


def _raw_records(spec) -> list[dict]:
    """Rows of a preset in its own files' terms: its columns, labels as the files write them."""
    rows = []
    for i, text in enumerate(_TEXTS):
        row = {c: text for c in spec.text}
        row.update({c: f"{text} {j}" for j, c in enumerate(spec.choices)})
        if spec.render == "copa":
            row[spec.text[1]] = ("cause", "effect")[i % 2]
        if spec.kind == "regression":
            row[spec.label] = str(i * 1.25)
        elif spec.kind == "multiple-choice":
            row[spec.label] = i % len(spec.choices)
        else:
            row[spec.label] = spec.labels[i % len(spec.labels)]
        rows.append(row)
    return rows


@pytest.mark.parametrize("task", list(TASKS))
def test_write_split_round_trips_through_load_split(tmp_path, task):
    spec = TASKS[task]
    records = _raw_records(spec)
    for split in spec.splits:
        path = write_split(task, split, records, tmp_path)
        assert path == tmp_path / spec.folder / spec.file(split)
        loaded = load_split(task, split, tmp_path)
        expected = [i * 1.25 for i in range(4)] if spec.kind == "regression" else [
            i % len(spec.choices) if spec.choices else i % len(spec.labels) for i in range(4)]
        assert loaded["label"] == expected
        if not spec.render:
            assert loaded["text_a"] == _TEXTS
    assert not list(tmp_path.rglob("*.part"))
    if task == "boolq":  # SuperGLUE's own format: labels are JSON booleans
        assert json.loads(path.read_text().split("\n")[1])["label"] is True


def test_write_split_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match=r"row 1 has a tab or line break in its text"):
        write_split("sst2", "dev", [{"sentence": "a", "label": "0"}, {"sentence": "b\tc", "label": "1"}], tmp_path)
    with pytest.raises(ValueError, match=r"task cb dev: row 0 has label 'maybe', not one of"):
        write_split("cb", "dev", [{"premise": "a", "hypothesis": "b", "label": "maybe"}], tmp_path)
    assert not (tmp_path / "glue/SST-2/dev.tsv").exists()


def test_the_cli_writes_hub_data_once_into_the_local_layout_for_the_apps(no_sources, monkeypatch, capsys):
    """`fedtt-flwr simulate` with only the hub (here its cache): the apps get a local folder, fetched once."""
    from fedtt_flwr.cli import local_data_dir

    monkeypatch.setenv("FEDTT_CACHE_DIR", str(no_sources / "cache"))
    _fake_hub_cache(no_sources / "hf" / "datasets", {"train": [("good", 1), ("bad", 0)], "validation": [("ok", 1)]})
    folder = local_data_dir("sst2", None)
    assert folder == (no_sources / "cache" / "data").resolve()
    assert load_split("sst2", "train", folder)["text_a"] == ["good", "bad"]
    assert "fetching sst2" in capsys.readouterr().out
    assert local_data_dir("sst2", None) == folder  # the second run reads the folder: no fetch
    assert "fetching" not in capsys.readouterr().out


def test_a_custom_task_on_a_hub_dataset_takes_its_class_names(no_sources, monkeypatch):
    """`task = custom` with `hub-dataset`: its own column names, labels from its ClassLabel (here from the cache)."""
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.data import with_labels
    from fedtt_flwr.tasks import task_of

    _fake_hub_cache(no_sources / "hf" / "datasets", {"train": [("good", 1), ("bad", 0)], "validation": [("ok", 1)]})
    cfg = RunConfig(task="custom", hub_dataset="nyu-mll/glue", hub_config="sst2", text_columns="sentence")
    task = with_labels(task_of(cfg))
    assert task.labels == ("negative", "positive")
    train, dev, _ = load_task(task)
    assert (train["text_a"], train["label"], dev["label"]) == (["good", "bad"], [1, 0], [1])
    with pytest.raises(ValueError, match=r"nyu-mll/glue sst2 \[train\]: no column 'text'"):
        load_split(task_of(cfg.model_copy(update={"text_columns": "text", "labels": "negative,positive"})), "train")
